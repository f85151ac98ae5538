"""ProtoMAML (Triantafillou et al. 2020): MAML whose linear head starts each task as a prototype classifier:
W_k = 2c_k, b_k = −‖c_k‖² from the support embeddings' class means c_k (the prototypical network's logits
up to ‖z‖²), then body and head adapt as in MAML. The start is a function of θ, so the meta-gradient flows
through the prototypes into the body, also in first order. The module's head only fixes the ways.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from mamlkit import functional as fn
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML
from mamlkit.strategies import Strategy


def find_head(model: nn.Module, name: str | None) -> tuple[str, nn.Linear]:
    """The named ``nn.Linear`` with a bias, or the model's last ``nn.Linear`` when ``name`` is None."""
    modules = dict(model.named_modules())
    if name is None:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise MamlkitError("ProtoMAML needs a final nn.Linear head; the model has none: add one or pass head=")
        name = linears[-1]
    if name not in modules:
        raise MamlkitError(f"head {name!r} is not a submodule of the model; pass one of the names in "
                           f"model.named_modules()")
    head = modules[name]
    if not isinstance(head, nn.Linear):
        raise MamlkitError(f"ProtoMAML's head {name!r} must be an nn.Linear, got {type(head).__name__}; "
                           f"name the final linear layer with head='...'")
    if head.bias is None:
        raise MamlkitError(f"ProtoMAML's head {name!r} is an nn.Linear without bias; build it with bias=True "
                           f"(the bias holds −‖c_k‖²)")
    return name, head


def prototype_head(embeddings: Tensor, labels: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """W = 2c, b = −‖c‖² from the class means c_k of ``embeddings [n, d]`` with ``labels [n]``."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)
    prototypes = (one_hot.T @ embeddings) / one_hot.sum(0)[:, None]
    return 2 * prototypes, -(prototypes ** 2).sum(-1)


class PrototypeHead(Strategy):
    """The unrolled inner loop (second or first order) starting from θ plus the support set's prototype head."""

    def __init__(self, model: nn.Module, head: str | None):
        super().__init__()
        self.head_name, self.head = find_head(model, head)
        prefix = f"{self.head_name}." if self.head_name else ""
        self.excluded = (prefix + "weight", prefix + "bias")

    def _embed(self, loop: fn.InnerLoop, params: fn.Params, x: Tensor) -> Tensor:
        """The head's input for ``x``, by running the model with a hook on the head."""
        seen = {}
        placeholder = {key: getattr(self.head, key.rsplit(".", 1)[-1]).detach() for key in self.excluded}
        hook = self.head.register_forward_hook(lambda module, args, output: seen.update(input=args[0], output=output))
        try:
            output = loop.at(0)({**params, **placeholder}, x)
        finally:
            hook.remove()
        if "input" not in seen or output is not seen["output"]:
            raise MamlkitError(f"ProtoMAML's head {self.head_name!r} is not the model's last operation; "
                               f"name the final nn.Linear with head='...'")
        if seen["input"].dim() != 2:
            raise MamlkitError(f"the head's input has shape {tuple(seen['input'].shape)} per task; ProtoMAML "
                               f"needs one embedding vector per example [n, features]")
        return seen["input"]

    def start(self, loop: fn.InnerLoop, params: fn.Params, x: Tensor, y: Tensor) -> fn.Params:
        """θ plus the support set's prototype head; the body as fresh views of θ, so the inner gradient is
        the partial derivative with the head held fixed (not also through the prototypes)."""
        weight, bias = prototype_head(self._embed(loop, params, x), y, self.head.out_features)
        return {**{n: p.view_as(p) for n, p in params.items()}, self.excluded[0]: weight, self.excluded[1]: bias}

    def check_labels(self, *labels: Tensor) -> None:
        ways = self.head.out_features
        for y in labels:
            if y.is_floating_point() or y.is_complex():
                raise MamlkitError(f"ProtoMAML needs integer class labels, got {y.dtype} targets")
            if y.numel() and (y.min() < 0 or y.max() >= ways):
                raise MamlkitError(f"labels must lie in [0, {ways}) for the {ways}-way head "
                                   f"{self.head_name!r}, got [{int(y.min())}, {int(y.max())}]")
        support = labels[0] if labels[0].dim() > 1 else labels[0][None]
        missing = F.one_hot(support.flatten(1), ways).sum(1) == 0
        if missing.any():
            raise MamlkitError(f"class {int(missing.nonzero()[0, 1])} has no support example in some task; "
                               f"ProtoMAML needs every class in every support set")


class ProtoMAML(MAML):
    """ProtoMAML around an unmodified classifier whose last operation is the linear ``head`` (a name in
    ``model.named_modules()``; default: the last ``nn.Linear``). Labels are integers in [0, ways), every class in
    every support set; ``adapt`` returns body and head for ``predict``; ``learn_lr`` learns the head's rates too."""

    def __init__(self, model, loss_fn, inner_lr: float, inner_steps: int = 1, *, head: str | None = None, **options):
        super().__init__(model, loss_fn, inner_lr, inner_steps, strategy=PrototypeHead(model, head), **options)
