"""mamlkit: exact, vmapped Model-Agnostic Meta-Learning for any PyTorch nn.Module."""

from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML

__all__ = ["MAML", "MamlkitError"]
__version__ = "0.1.0"
