"""A whole meta-iteration, meta-gradient AND optimizer step, as one compiled call.

Small workloads (the sinusoid MLP: 14 MFLOP per iteration) are bound by dispatch, not arithmetic:
with only the meta-gradient compiled, the eager optimizer step, zero_grad and the Python around
them cost more than the compiled gradient itself. Here ``torch.func.grad_and_value`` of the
meta-objective and the optimizer's own ``step()`` (traced by torch.compile, so any torch.optim
optimizer, its state and its checkpoints stay standard) run as one graph.
"""

from functools import partial

import torch

from mamlkit.engine import distributed
from mamlkit.engine.trainer import MetaLearner
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML
from mamlkit.strategies import Strategy


class CompiledMetaLearner(MetaLearner):
    """``MetaLearner`` whose ``step`` is one compiled call; the same updates as the eager learner.

    For the MAML family whose meta-gradient is autograd through the unrolled inner loop (MAML,
    Meta-SGD, LSLR, ANIL); not for runs that must see the gradient between backward and step
    (torchrun's all-reduce, a learning-rate schedule, which would recompile on every change).
    """

    def __init__(self, maml: MAML, optimizer: torch.optim.Optimizer, mode: str | None = None):
        super().__init__(maml, optimizer)
        if not one_call(self):
            raise MamlkitError(f"a compiled meta-iteration needs plain MAML (or metasgd, lslr, anil), one process "
                               f"and no learning-rate schedule, not {type(maml).__name__} with "
                               f"{type(maml.strategy).__name__}; use MetaLearner (--compile off)")
        # Detached aliases of the parameters: the optimizer updates them in place, which autograd would
        # refuse on tensors the traced gradient is taken of.
        meta, self.constants = maml.strategy.meta_inputs(maml)
        self.meta = {group: {n: t.detach() for n, t in tensors.items()} for group, tensors in meta.items()}
        self.tensors = meta
        self.mode = mode  # torch.compile's: "reduce-overhead" replays CUDA graphs on a GPU
        self._compiled = {}  # first order? -> the compiled iteration

    def _iteration(self, meta, constants, batch, step_weights, *, first_order: bool):
        objective = partial(self.maml.strategy.meta_objective, self.maml, first_order=first_order)
        grads, loss = torch.func.grad_and_value(objective)(meta, constants, batch, step_weights)
        for group, tensors in self.tensors.items():
            for name, tensor in tensors.items():
                tensor.grad = grads[group][name]
        self.optimizer.step()  # torch.optim breaks the graph here: two graphs, one call
        return loss

    def step(self, batch) -> dict[str, float]:
        batch = tuple(batch[:4])
        self.maml._check_batch(*batch)
        first_order, step_weights = self.maml.training_options()
        if first_order not in self._compiled:
            self._compiled[first_order] = torch.compile(partial(self._iteration, first_order=first_order),
                                                        **self._compile_options(batch[0]))
        loss = self._compiled[first_order](self.meta, self.constants, batch, step_weights)
        return {"query_loss": loss.item()}

    def batching(self) -> dict:
        return {"batching": "vmap", "compiled": "the meta-gradient and the optimizer step in one call"}

    def _compile_options(self, example: torch.Tensor) -> dict:
        """On a CPU inductor's C++ wrapper calls the kernels with no Python between them (the sinusoid
        iteration: 0.75 -> 0.69 ms on one thread, benchmarks/floor.py); elsewhere the mode asked for."""
        if self.mode is None and example.device.type == "cpu":
            return {"options": {"cpp_wrapper": True}}
        return {"mode": self.mode}


def one_call(learner: MetaLearner) -> bool:
    """Whether the learner's whole iteration can run as one call (compiled, or a CUDA graph): the
    meta-gradient is the unrolled loop's autograd, ``meta_backward`` adds nothing to it, and nothing
    must see the gradient before the step (no other processes, no learning-rate schedule)."""
    maml = learner.maml
    return (type(maml) is MAML and type(maml.strategy) is Strategy and not maml.checkpoint_inner
            and learner.scheduler is None and distributed.world_size() == 1)


def meta_learner(maml: MAML, optimizer: torch.optim.Optimizer, compile_iteration: bool) -> MetaLearner:
    """The compiled learner when asked for and possible, else the eager one."""
    learner = MetaLearner(maml, optimizer)
    if compile_iteration and one_call(learner):
        return CompiledMetaLearner(maml, optimizer)
    return learner
