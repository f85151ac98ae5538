"""The speed machinery: the timed choice of a path and the chunked backward are exact and choose right."""

import pytest
import torch

from mamlkit.chunked import backward_in_chunks
from mamlkit.errors import MamlkitError
from mamlkit.timed_choice import TimedChoice
from reference import reference_meta_grad, reference_meta_loss, relative_error, trainable
from zoo import CASES


class FakeClock:
    """Seconds advance only when a candidate 'runs' for its given cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def timed(costs: dict[str, list[float]], clock: FakeClock, calls: list[str]):
    """Candidates that record their name and take the next of their costs in seconds."""
    def candidate(name):
        def run(x):
            calls.append(name)
            clock.now += costs[name].pop(0)
            return (name, x)
        return run
    return {name: candidate(name) for name in costs}


def test_timed_choice_warms_up_times_then_keeps_the_fastest():
    clock, calls = FakeClock(), []
    # warm-up costs (first entry) are ignored: "b" is slow only on its first call
    costs = {"a": [0.1, 2.0, 2.2, 9.0], "b": [50.0, 1.0, 1.2, 9.0, 9.0], "c": [0.1, 3.0, 3.0]}
    choice = TimedChoice(timed(costs, clock, calls), rounds=2, clock=clock)
    results = [choice(i) for i in range(11)]
    assert calls == ["a", "b", "c"] * 3 + ["b", "b"]
    assert choice.chosen == "b" and results[-1] == ("b", 10)
    assert choice.report() == {"chosen": "b", "ms": {"a": [2000.0, 2200.0], "b": [1000.0, 1200.0],
                                                    "c": [3000.0, 3000.0]}}


def test_timed_choice_prefers_an_earlier_candidate_within_tolerance():
    clock, calls = FakeClock(), []
    costs = {"low memory": [1.0, 1.04, 1.04], "fast": [1.0, 1.0, 1.0], "slow": [1.0, 1.5, 1.5]}
    choice = TimedChoice(timed(costs, clock, calls), rounds=2, tolerance=0.05, clock=clock)
    for i in range(9):
        choice(i)
    assert choice.chosen == "low memory"
    costs = {"low memory": [1.0, 1.1, 1.1], "fast": [1.0, 1.0, 1.0]}
    choice = TimedChoice(timed(costs, clock, []), rounds=2, tolerance=0.05, clock=clock)
    for i in range(6):
        choice(i)
    assert choice.chosen == "fast"


def test_timed_choice_with_one_candidate_does_not_time():
    choice = TimedChoice({"loop": lambda x: x + 1})
    assert choice.chosen == "loop" and choice(1) == 2 and choice.report()["ms"] == {"loop": []}
    with pytest.raises(MamlkitError, match="at least one candidate"):
        TimedChoice({})


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8])
def test_backward_in_chunks_is_the_whole_batch_gradient(chunk_size):
    """Chunks of unequal size (5 tasks in chunks of 2 or 3) are weighted by their share of the tasks."""
    make_model, make_batch, loss_fn = CASES["paper_omniglot_conv"]
    torch.manual_seed(0)
    model = make_model()
    batch = make_batch(tasks=5)
    expected = reference_meta_grad(model, loss_fn, 0.3, 2, batch)
    model.zero_grad(set_to_none=True)
    loss = backward_in_chunks(lambda *chunk: reference_meta_loss(model, loss_fn, 0.3, 2, chunk), batch, chunk_size)
    actual = {n: p.grad for n, p in trainable(model).items()}
    assert relative_error(actual, expected) < 1e-12
    assert torch.allclose(loss, reference_meta_loss(model, loss_fn, 0.3, 2, batch).detach(), rtol=1e-12)
