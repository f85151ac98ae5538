"""The speed paths: chunked and auto-chosen task batching and the compiled iteration are exact, and
the timed choice picks right."""

import dataclasses
import os
import platform
from functools import partial

import pytest
import torch

from mamlkit import MAML
from mamlkit.algorithms import build_algorithm
from mamlkit.chunked import backward_in_chunks
from mamlkit.compiled_iteration import CompiledMetaLearner, meta_learner
from mamlkit.cuda_graph import GraphedMetaLearner
from mamlkit.engine.trainer import MetaLearner
from mamlkit.errors import MamlkitError
from mamlkit.experiments import fewshot
from mamlkit.presets import get_preset
from mamlkit.timed_choice import TimedChoice, cpu_name
from reference import reference_meta_grad, reference_meta_loss, relative_error, trainable
from zoo import CASES


def build(case, seed=0):
    make_model, make_batch, loss_fn = CASES[case]
    torch.manual_seed(seed)
    return make_model(), make_batch(), loss_fn


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


@pytest.mark.usefixtures("float64")
def test_compiled_iteration_makes_the_eager_updates():
    """Meta-gradient and Adam step in one compiled call: the same parameters, learned rates and Adam state
    after three iterations as MetaLearner's eager steps (Meta-SGD rates and a frozen layer included)."""
    make_model, make_batch, loss_fn = CASES["frozen"]
    learners = []
    for learner_class in (MetaLearner, CompiledMetaLearner):
        torch.manual_seed(0)
        maml = MAML(make_model(), loss_fn, inner_lr=0.1, learn_lr="metasgd")
        learners.append(learner_class(maml, torch.optim.Adam(maml.parameters(), lr=0.01)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = make_batch(generator=generator)
        losses = [learner.step(batch)["query_loss"] for learner in learners]
        assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    eager, compiled = (dict(learner.maml.named_parameters()) for learner in learners)
    assert relative_error(compiled, eager) < 1e-12
    states = [learner.optimizer.state_dict()["state"] for learner in learners]
    assert all(torch.allclose(states[1][i]["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-10) and
               states[1][i]["step"] == s["step"] == 3 for i, s in states[0].items())


@pytest.mark.parametrize("algorithm", ["mamlpp", "reptile"])
def test_compiled_iteration_refuses_what_it_would_get_wrong(algorithm):
    """MAML++ counts iterations in meta_backward, Reptile's update is not a gradient: neither compiles."""
    maml = build_algorithm(algorithm, CASES["mlp"][0](), CASES["mlp"][2], inner_lr=0.1)
    with pytest.raises(MamlkitError, match="needs plain MAML"):
        CompiledMetaLearner(maml, torch.optim.Adam(maml.parameters()))
    assert type(meta_learner(maml, torch.optim.Adam(maml.parameters()), compile_iteration=True)) is MetaLearner


def test_cuda_graph_learner_refuses_a_cpu_model():
    """Capturing needs CUDA (its exactness is checked on a GPU by benchmarks/gpu_check.py in float64:
    SGD steps against SGD on the reference loop's meta-gradients, Adam steps against the eager learner);
    elsewhere a one-line error says what to use."""
    maml = MAML(CASES["mlp"][0](), CASES["mlp"][2], inner_lr=0.1)
    with pytest.raises(MamlkitError, match="needs a CUDA device.*--compile off"):
        GraphedMetaLearner(maml, torch.optim.Adam(maml.parameters()))


@pytest.mark.parametrize("algorithm, compile_choice, device, expected", [
    ("maml", "auto", "cpu", MetaLearner), ("maml", "off", "cuda", MetaLearner),
    ("mamlpp", "auto", "cuda", MetaLearner), ("maml", "auto", "cuda", GraphedMetaLearner)])
def test_few_shot_compile_auto_takes_the_cuda_graph_where_it_applies(algorithm, compile_choice, device, expected):
    """auto: the CUDA graph for one-call learners on a CUDA device, eager elsewhere (MAML++ counts its
    iterations in meta_backward). Here the model stays on the CPU, so choosing the graph shows as its
    refusal of a CPU model."""
    config = dataclasses.replace(get_preset("omniglot-5w1s").config, compile=compile_choice, algo=algorithm)
    maml = build_algorithm(algorithm, CASES["mlp"][0](), CASES["mlp"][2], inner_lr=0.1)
    choose = partial(fewshot.choose_learner, config, maml, torch.optim.Adam(maml.parameters()), torch.device(device))
    if expected is GraphedMetaLearner:
        with pytest.raises(MamlkitError, match="needs a CUDA device"):
            choose()
    else:
        assert type(choose()) is expected


# -- chunked and auto-chosen task batching, against the independent reference -----------------------
def meta_gradient(maml, batch):
    maml.zero_grad(set_to_none=True)
    maml.meta_backward(*batch)
    return {n: p.grad.clone() for n, p in trainable(maml.model).items()}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_in_chunks_matches_reference_loop(case, steps, first_order):
    """3 tasks back-propagated 2 at a time (chunks of 2 and 1)."""
    model, batch, loss_fn = build(case)
    expected = reference_meta_grad(model, loss_fn, 0.3, steps, batch, first_order=first_order)
    maml = MAML(model, loss_fn, inner_lr=0.3, inner_steps=steps, first_order=first_order, batching="vmap",
                meta_batch_chunk=2)
    assert relative_error(meta_gradient(maml, batch), expected) < 1e-10


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", list(CASES))
def test_every_auto_candidate_matches_reference_loop(case):
    """The timed calls run each candidate (vmap in chunks of 1, 2 and 3 of 3 tasks, the loop, on image batches
    also the loop on channels-last images) in turn; every one of them, and the path kept afterwards, gives
    the reference gradient."""
    model, batch, loss_fn = build(case)
    expected = reference_meta_grad(model, loss_fn, 0.3, 2, batch)
    maml = MAML(model, loss_fn, inner_lr=0.3, inner_steps=2)
    images = ["loop, channels-last images"] if batch[0].dim() == 5 else []
    candidates = ["vmap, 1 tasks per backward", "vmap, 2 tasks per backward", "loop", *images, "vmap"]
    for call in range(3 * len(candidates) + 1):
        assert relative_error(meta_gradient(maml, batch), expected) < 1e-10, f"call {call}"
    report = maml.mapping.report()
    assert list(report["ms"]) == candidates and all(len(ms) == 2 for ms in report["ms"].values())
    assert report["chosen"] in candidates and report["batching"] == "auto"


def test_auto_does_not_time_paths_a_model_cannot_take():
    """A BatchNorm with running statistics cannot be vmapped: auto loops (in chunks if asked) and times nothing."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    maml = MAML(model, torch.nn.functional.mse_loss, inner_lr=0.1, meta_batch_chunk=2)
    with pytest.warns(UserWarning, match="Python loop"):
        maml.meta_backward(*CASES["mlp"][1]())
    assert maml.mapping.report() == {"batching": "auto", "meta_batch_chunk": 2}


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_meta_batch_chunk_must_be_a_positive_count(chunk):
    with pytest.raises(MamlkitError, match="meta_batch_chunk must be a whole number >= 1"):
        MAML(CASES["mlp"][0](), torch.nn.functional.mse_loss, inner_lr=0.1, meta_batch_chunk=chunk)


def two_learners_the_first_timed() -> tuple[list[MetaLearner], tuple]:
    """Two fresh MLP learners and a batch; the first has stepped until batching='auto' chose its path."""
    make_model, make_batch, loss_fn = CASES["mlp"]
    mamls = [MAML(make_model(), loss_fn, inner_lr=0.1) for _ in range(2)]
    learners = [MetaLearner(maml, torch.optim.Adam(maml.parameters())) for maml in mamls]
    batch = make_batch()
    while learners[0].maml.mapping.report().get("chosen") is None:
        learners[0].step(batch)
    return learners, batch


def cpu_description(threads: int) -> str:
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, {threads} threads"


def test_the_cpu_is_named_by_its_model_where_linux_says_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_name(str(cpuinfo)) == "AMD EPYC 9654 96-Core Processor"
    assert cpu_name(str(tmp_path / "missing")) == (platform.processor() or platform.machine())


def test_a_resumed_run_keeps_the_path_auto_chose():
    """The choice and its timings travel in the learner's checkpoint state: a resumed run goes on without
    timing again and still reports what was timed."""
    learners, batch = two_learners_the_first_timed()
    learners[1].load_state_dict(learners[0].state_dict())
    assert learners[1].batching()["chosen"] == learners[0].batching()["chosen"]
    learners[1].step(batch)
    assert learners[1].batching() == learners[0].batching()  # the same record, nothing timed again


@pytest.mark.parametrize("elsewhere", ["other threads", "older record"])
def test_a_choice_timed_elsewhere_is_timed_again(elsewhere):
    """A run resumed with another CPU thread count (or from a record that does not say where it was timed)
    times its paths again instead of keeping a choice that may not hold here."""
    learners, batch = two_learners_the_first_timed()
    state, threads = learners[0].state_dict(), torch.get_num_threads()
    assert state["batching"]["timed_on"] == cpu_description(threads)
    if elsewhere == "older record":
        del state["batching"]["timed_on"]
    torch.set_num_threads(threads + 1 if elsewhere == "other threads" else threads)
    try:
        learners[1].load_state_dict(state)
        assert "chosen" not in learners[1].batching()
        learners[1].step(batch)
        assert learners[1].batching()["chosen"] is None
        assert learners[1].batching()["timed_on"] == cpu_description(torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)
