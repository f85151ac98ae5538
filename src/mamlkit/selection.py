"""What the inner loop adapts: θ, the parameters meta-learned but fixed within a task (ANIL's body), constants."""

import fnmatch
from typing import Sequence

from torch import nn

from mamlkit.errors import MamlkitError
from mamlkit.functional import Params


class ParameterSelection:
    """The adapted parameters are the trainable ones matching ``adapt_only`` (fnmatch patterns; all
    when None), minus ``excluded`` names (ProtoMAML's head, rebuilt per task). Tied parameters appear once."""

    def __init__(self, model: nn.Module, adapt_only: str | Sequence[str] | None = None, excluded: Sequence[str] = ()):
        self.model, self.excluded = model, set(excluded)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise MamlkitError(f"the model ({type(model).__name__}) has no trainable parameters, so there is "
                               f"nothing to adapt; give it parameters with requires_grad=True")
        adapt_only = [adapt_only] if isinstance(adapt_only, str) else adapt_only
        self.patterns = None if adapt_only is None else list(adapt_only)
        if self.patterns is not None and not any(map(self._matches, trainable)):
            raise MamlkitError(f"adapt_only={self.patterns} matches none of the trainable parameters "
                               f"{trainable}; give fnmatch patterns such as 'head.*'")

    def _matches(self, name: str) -> bool:
        return self.patterns is None or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)

    def adapted(self) -> Params:
        """θ: the trainable parameters the inner loop adapts, by name."""
        return {name: p for name, p in self.model.named_parameters()
                if p.requires_grad and self._matches(name) and name not in self.excluded}

    def fixed_trainable(self) -> Params:
        """Meta-learned parameters the inner loop holds fixed (ANIL's body)."""
        return {name: p for name, p in self.model.named_parameters()
                if p.requires_grad and not self._matches(name) and name not in self.excluded}

    def constants(self) -> Params:
        """Everything the forward needs besides θ: fixed and frozen parameters, and buffers."""
        adapted = self.adapted()
        return {**{name: p for name, p in self.model.named_parameters() if name not in adapted and
                   name not in self.excluded}, **dict(self.model.named_buffers())}
