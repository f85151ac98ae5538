"""A meta-iteration replayed as one captured CUDA graph: the GPU's launch overhead paid once.

On a GPU the few-shot conv step is bound by kernel launches, not arithmetic: ~10 GFLOP spread over
hundreds of small kernels (25 ms eager on an H200, where the arithmetic takes well under 1 ms).
``torch.cuda.graph`` records one eager iteration -- the meta-gradient and the optimizer step -- and
every later iteration copies its batch into the recorded inputs and replays all of it in one launch.
The kernels are the eager path's, so the arithmetic (and its exactness) is the eager path's.
"""

import torch

from mamlkit.compiled_iteration import one_call
from mamlkit.engine.trainer import MetaLearner, optimizer_parameters
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML

WARMUP = 2  # eager meta-gradients on a side stream before the capture (library kernels, workspaces)


class GraphedMetaLearner(MetaLearner):
    """``MetaLearner`` that steps eagerly once (and while ``batching='auto'`` times its paths), then
    records one iteration and replays it (recorded again after a shape change or a load). Batches
    are checked when recorded, not on every replay."""

    def __init__(self, maml: MAML, optimizer: torch.optim.Optimizer, clip_value: float | None = None):
        super().__init__(maml, optimizer, clip_value)
        device = next(maml.parameters()).device
        if device.type != "cuda" or not one_call(self):
            raise MamlkitError(f"a CUDA-graph meta-iteration needs a CUDA device, plain MAML (or metasgd, lslr, anil), "
                               f"one process and no learning-rate schedule, not {type(maml).__name__} on {device}; "
                               f"use --compile off")
        self._make_capturable()
        self._graph = self._inputs = self._loss = None
        self._eager_steps = 0

    def step(self, batch) -> dict[str, float]:
        batch = tuple(batch[:4])
        mapping = self.maml.mapping
        timing = mapping.batching == "auto" and (mapping.choice is None or mapping.choice.chosen is None)
        if not self._eager_steps or timing:  # the optimizer's state is created outside the graph
            self._eager_steps += 1
            return super().step(batch)
        if self._graph is None or [t.shape for t in batch] != [t.shape for t in self._inputs]:
            self._capture(self.maml._check_batch(*batch))
        for recorded, tensor in zip(self._inputs, batch):
            recorded.copy_(tensor)
        self._graph.replay()
        return {"query_loss": self._loss.item()}

    def _capture(self, batch: tuple[torch.Tensor, ...]) -> None:
        self._inputs = tuple(t.clone() for t in batch)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self.optimizer.zero_grad(set_to_none=True)
                self._meta_gradient()
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates .grad in the graph's pool
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._loss = self._meta_gradient()
            if self.clip_value is not None:
                torch.nn.utils.clip_grad_value_(optimizer_parameters(self.optimizer), self.clip_value)
            self.optimizer.step()

    def _meta_gradient(self) -> torch.Tensor:
        self.maml.rates.project()  # LSLR's rates, as _check_batch does before every eager step
        return self.maml.strategy.meta_backward(self.maml, self._inputs)

    def _make_capturable(self) -> None:
        """Optimizer steps without host syncs: step counts on the device (Adam's ``capturable``)."""
        for group in self.optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = True
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=next(self.maml.parameters()).device, dtype=torch.float32)

    def state_dict(self) -> dict:
        """Saved as an eager learner's, so the checkpoint resumes anywhere (a CPU has no capturable Adam)."""
        state = super().state_dict()
        for group in state["optimizer"]["param_groups"]:
            if "capturable" in group:
                group["capturable"] = False
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._make_capturable()
        self._graph = None  # the optimizer's state tensors were replaced: record again
