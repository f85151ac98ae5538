"""Your own tasks end to end: a table (CSV or parquet) of many small regression or classification
tasks, and your own sampler (--tasks package.module:function); adapt and predict, the adapted weights
in a plain nn.Module without mamlkit, and the one-line errors."""

import csv
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlkit.cli import main
from mamlkit.deploy import adapt_run, predict_run
from mamlkit.errors import MamlkitError
from mamlkit.tasks.table import TableTasks, load_table
from test_own_images import plain_torch

TINY = ["--iterations", "6", "--validate-every", "3", "--validation-tasks", "4", "--eval-tasks", "8",
        "--meta-batch", "4", "--support", "5", "--query", "5", "--eval-steps", "3", "--hidden", "8"]
PLAIN_MLP = "model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, {outputs}))"


def write_table(path, tasks=12, rows=12):
    """Tasks u00.. : y = a·sin(x1 − φ) + 100 with a feature in the hundreds; label = sign of the sine."""
    rng = np.random.default_rng(0)
    records = []
    for t in range(tasks):
        a, phase = rng.uniform(0.5, 3), rng.uniform(0, 3)
        for _ in range(rows):
            x1, x2 = rng.uniform(-5, 5), rng.uniform(0, 1000)
            records.append({"user": f"u{t:02d}", "x1": round(x1, 4), "x2": round(x2, 2),
                            "y": round(a * np.sin(x1 - phase) + 100, 4),
                            "label": "up" if np.sin(x1 - phase) > 0 else "down"})
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), path)
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return records


def write_rows(path, records):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("table")
    records = write_table(base / "tasks.csv")
    run = base / "run"
    assert main(["train", "table", "--data", str(base / "tasks.csv"), "--task-column", "user",
                 "--target-column", "y", "--features", "x1", "x2", *TINY, "--out", str(run)]) == 0
    return run, records


def test_table_run_has_the_sinusoid_outputs(regression_run):
    run, _ = regression_run
    results = json.loads((run / "results.json").read_text())
    rows = results["results"]["K=5"]
    assert set(rows) == {"maml", "pretrained"} and len(rows["maml"]["mse"]) == 4  # 0..3 steps
    assert results["checkpoint_iteration"] in (3, 6) and results["eval_tasks"] == 8
    assert (run / "mse_vs_steps.png").stat().st_size > 0
    scaling = json.loads((run / "table.json").read_text())
    assert scaling["features"] == ["x1", "x2"] and 300 < scaling["feature_mean"][1] < 700
    assert 99 < scaling["target_mean"] < 101
    validated = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val/mse" in r]
    assert [r["iteration"] for r in validated] == [3, 6]
    assert "pretrained/mse" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def test_regression_weights_take_raw_features_without_mamlkit(regression_run, tmp_path):
    run, records = regression_run
    task = [r for r in records if r["user"] == "u11"]
    support, query = write_rows(tmp_path / "s.csv", task[:5]), write_rows(tmp_path / "q.csv", task[5:])
    outcome = predict_run(run, support, query, out=tmp_path / "p.csv")
    rows = list(csv.DictReader(open(outcome["path"])))
    assert outcome["items"] == 7 and set(rows[0]) == {"item", "value", "target"}
    values, targets = (np.array([float(r[k]) for r in rows]) for k in ("value", "target"))
    assert targets == pytest.approx([r["y"] for r in task[5:]], abs=1e-3)
    assert outcome["mse"] == pytest.approx(((values - targets) ** 2).mean(), rel=1e-4)
    torch.save(torch.tensor([[r["x1"], r["x2"]] for r in task[5:]], dtype=torch.float32), tmp_path / "x.pt")
    for suffix in (".pt", ".safetensors"):
        weights = adapt_run(run, support, out=tmp_path / f"w{suffix}")
        raw = plain_torch(PLAIN_MLP.format(outputs=1), weights, tmp_path / "x.pt", activation="none")
        assert raw[:, 0].numpy() == pytest.approx(values, abs=1e-3)


def test_predict_from_the_command_line_reports_the_mse(regression_run, tmp_path, capsys):
    run, records = regression_run
    task = [r for r in records if r["user"] == "u11"]
    support, query = write_rows(tmp_path / "s.csv", task[:5]), write_rows(tmp_path / "q.csv", task[5:])
    assert main(["predict", str(run), "--support", str(support), "--query", str(query), "--steps", "1",
                 "--out", str(tmp_path / "cli.csv")]) == 0
    outcome = predict_run(run, support, query, steps=1, out=tmp_path / "api.csv")
    assert capsys.readouterr().out == f"7 predictions -> {tmp_path / 'cli.csv'}, MSE {outcome['mse']:.4g}\n"
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "api.csv").read_text()


def test_classification_from_parquet(tmp_path, capsys):
    records = write_table(tmp_path / "tasks.parquet")
    run = tmp_path / "run"
    assert main(["train", "table", "--data", str(tmp_path / "tasks.parquet"), "--task-column", "user",
                 "--target-column", "label", "--features", "x1", "x2", "--problem", "classification", *TINY,
                 "--out", str(run)]) == 0
    assert "accuracy" in json.loads((run / "results.json").read_text())["results"]["K=5"]["maml"]
    assert (run / "accuracy_vs_steps.png").stat().st_size > 0
    (tmp_path / "tasks.parquet").unlink()  # adapting needs the run, not the training table
    task = [r for r in records if r["user"] == "u02"]
    support, query = write_rows(tmp_path / "s.csv", task[:6]), write_rows(tmp_path / "q.csv", task[6:])
    outcome = predict_run(run, support, query, out=tmp_path / "p.csv")
    rows = list(csv.DictReader(open(outcome["path"])))
    assert {r["prediction"] for r in rows} <= {"down", "up"} and [r["label"] for r in rows] == [
        r["label"] for r in task[6:]]
    assert outcome["accuracy"] == sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    weights = adapt_run(run, support, out=tmp_path / "w.pt")
    assert json.loads((tmp_path / "w.pt.json").read_text())["classes"] == ["down", "up"]
    torch.save(torch.tensor([[r["x1"], r["x2"]] for r in task[6:]], dtype=torch.float32), tmp_path / "x.pt")
    probabilities = plain_torch(PLAIN_MLP.format(outputs=2), weights, tmp_path / "x.pt")
    assert probabilities.max(dim=1).values.numpy() == pytest.approx([float(r["probability"]) for r in rows],
                                                                    abs=2e-6)
    unlabelled = write_rows(tmp_path / "u.csv", [{"x1": r["x1"], "x2": r["x2"]} for r in task[6:]])
    assert set(next(csv.DictReader(open(predict_run(run, support, unlabelled)["path"])))) == {
        "item", "prediction", "probability"}
    other = write_rows(tmp_path / "o.csv", [{**r, "label": "sideways"} for r in task[:6]])
    with pytest.raises(MamlkitError, match=r"classes \['sideways'\] that the run does not know"):
        adapt_run(run, other)


SAMPLER = '''
import torch

class Lines:
    """y = a·x + b per task; a regression sampler following mamlkit's protocol."""
    def __init__(self, split):
        self.offset = {"train": 0.0, "val": 0.5, "test": 1.0}[split]

    def sample(self, num_tasks, generator):
        a = torch.rand(num_tasks, 1, 1, generator=generator) * 2 + self.offset
        x = torch.rand(num_tasks, 8, 1, generator=generator) * 4 - 2
        y = a * x
        return x[:, :4], y[:, :4], x[:, 4:], y[:, 4:]

def make(split):
    return Lines(split)

def broken(split):
    return object()
'''


def test_your_own_sampler_trains_with_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "mytasks.py").write_text(textwrap.dedent(SAMPLER))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert main(["train", "tasks", "--tasks", "mytasks:make", *TINY, "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert set(results["results"]) == {"K=4"} and len(results["results"]["K=4"]["maml"]["mse"]) == 4
    assert list((run / "tensorboard").iterdir()) and list((run / "checkpoints").glob("ckpt-*.pt"))
    assert main(["train", "--resume", str(run), "--iterations", "9"]) == 0  # continues from its checkpoint
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 9
    with pytest.raises(MamlkitError, match="adapt and predict take image and table runs"):
        adapt_run(run, tmp_path / "x.csv")
    for spec, message in (("mytasks", "is not package.module:function"), ("nothere:make", "cannot import"),
                          ("mytasks:nothing", "has no 'nothing'"), ("mytasks:broken", "does not follow the protocol")):
        capsys.readouterr()
        assert main(["train", "tasks", "--tasks", spec, *TINY, "--out", str(tmp_path / spec)]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and message in err[0], err


def test_bad_tables_get_one_line_errors(tmp_path, regression_run):
    records = write_table(tmp_path / "t.csv", tasks=3, rows=6)
    with pytest.raises(MamlkitError, match=r"lacks the column\(s\) \['who'\]"):
        load_table(tmp_path / "t.csv", "who", "y")
    with pytest.raises(MamlkitError, match="column 'label' of .* is not numeric \\(e.g. '(up|down)'\\)"):
        load_table(tmp_path / "t.csv", "user", "y")  # label is a feature by default
    with pytest.raises(MamlkitError, match="pass --problem classification"):
        load_table(tmp_path / "t.csv", "user", "label", ["x1"])
    table = load_table(tmp_path / "t.csv", "user", "y", ["x1", "x2"])
    with pytest.raises(MamlkitError, match="task 'u00' has 6 rows, fewer than 5 support \\+ 5 query"):
        TableTasks(table, [0, 1], 5, 5)
    write_rows(tmp_path / "gap.csv", [{**r, "x2": "" if i == 4 else r["x2"]} for i, r in enumerate(records)])
    with pytest.raises(MamlkitError, match="column 'x2' of .* has empty cells \\(row 4\\)"):
        load_table(tmp_path / "gap.csv", "user", "y", ["x1", "x2"])
    run, _ = regression_run
    with pytest.raises(MamlkitError, match="holds 3 tasks"):
        adapt_run(run, tmp_path / "t.csv")
    write_rows(tmp_path / "nox2.csv", [{"x1": r["x1"], "y": r["y"]} for r in records[:5]])
    with pytest.raises(MamlkitError, match=r"lacks the column\(s\) \['x2'\]"):
        adapt_run(run, tmp_path / "nox2.csv")
    with pytest.raises(MamlkitError, match="does not exist"):
        load_table(tmp_path / "missing.csv", "user", "y")


def docs_blocks(language: str) -> list[str]:
    """The ```language code blocks of docs/own-data.md, in order."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "own-data.md").read_text()
    return [block.split("```")[0] for block in text.split(f"```{language}\n")[1:]]


def test_the_documented_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    complete, sampler = docs_blocks("python")[:2]
    exec(compile(complete, "docs/own-data.md", "exec"), {})
    printed = next(line for line in capsys.readouterr().out.splitlines() if "item,prediction" in line)
    accuracy = float(printed.split()[0])
    assert 0 <= accuracy <= 1 and (tmp_path / "demo" / "adapted.pt").is_file()
    (tmp_path / "mytasks.py").write_text(sampler)
    monkeypatch.syspath_prepend(str(tmp_path))
    command = next(line for line in docs_blocks("bash")[-1].splitlines() if "--tasks" in line).split()
    assert main([*command[1:], "--iterations", "4", "--eval-tasks", "4", "--validation-tasks", "4",
                 "--out", "sampler-run"]) == 0
    assert (tmp_path / "sampler-run" / "results.json").is_file()


def test_table_run_under_torchrun_equals_one_process(tmp_path):
    import subprocess
    from mamlkit.engine.checkpoint import load_latest_checkpoint
    from test_distributed import ENV, max_difference, models, nested_max_difference, torchrun
    write_table(tmp_path / "t.csv")
    args = ["train", "table", "--data", str(tmp_path / "t.csv"), "--task-column", "user", "--target-column", "y",
            "--features", "x1", "x2", *TINY, "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run(torchrun(*args, "--out", str(tmp_path / "two")), env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    (one, _), (two_state, _) = (load_latest_checkpoint(tmp_path / run / "best") for run in ("one", "two"))
    assert one["iteration"] == two_state["iteration"] and max_difference(models(one), models(two_state)) < 1e-6
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert nested_max_difference(results[0], results[1]) < 1e-5  # sharded evaluation, gathered on rank 0
