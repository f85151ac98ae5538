"""Use a trained run on a new task: ``adapt_run`` adapts its model to a labelled support set and
exports the weights; ``predict_run`` adapts and labels a query set (docs/own-data.md).

The exported file is the model's plain ``state_dict`` with the adapted parameters in place of the
meta-learned ones: ``torch.load`` (or ``safetensors.torch.load_file`` for ``.safetensors``) and
``model.load_state_dict`` in the run's ``nn.Module`` need no mamlkit. Beside it,
``<file>.json`` names the classes (output ``i`` is ``classes[i]``). Support and query sets are read
the way the run read its training data: a folder of class folders (the class names are the
labels; a query may also be a flat folder of unlabelled images) for image runs, a CSV or parquet
table for table runs.
"""

import csv
import io
import json
import os
from pathlib import Path

import torch

from mamlkit.engine.files import atomic_write_bytes, writing
from mamlkit.engine.run import saved_config
from mamlkit.errors import MamlkitError
from mamlkit.models.layers import TransductiveBatchNorm


def adapt_run(run_dir: str | os.PathLike, support_path: str | os.PathLike, steps: int | None = None,
              out: str | os.PathLike | None = None) -> Path:
    """Adapt the run's model to the task in ``support_path`` and write its weights to ``out``
    (``.pt`` or ``.safetensors``; default ``<run_dir>/adapted.pt``); returns the path written."""
    task = _open(run_dir)
    params, classes = task.adapt(support_path, steps)
    path = Path(out) if out is not None else Path(run_dir) / "adapted.pt"
    _write(path, _state_bytes(task.export(params), path.suffix))
    _write(path.parent / f"{path.name}.json", (json.dumps(
        {"run": str(run_dir), "support": str(support_path), "steps": task.steps(steps), "classes": classes},
        indent=2) + "\n").encode())
    return path


def predict_run(run_dir: str | os.PathLike, support_path: str | os.PathLike, query_path: str | os.PathLike,
                steps: int | None = None, out: str | os.PathLike | None = None) -> dict:
    """Adapt to ``support_path`` and predict every item of ``query_path`` into a CSV at ``out``
    (default ``<run_dir>/predictions.csv``): item, prediction, probability (classification) or value
    (regression), and the label or target where the query has one. Returns ``{"path", "items"}`` and, for a
    labelled query, ``"accuracy"`` (a fraction) or ``"mse"``."""
    task = _open(run_dir)
    params, classes = task.adapt(support_path, steps)
    rows, summary = task.predict(params, classes, query_path, steps)
    path = Path(out) if out is not None else Path(run_dir) / "predictions.csv"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _write(path, table.getvalue().encode())
    return {"path": path, "items": len(rows), **summary}


def _open(run_dir: str | os.PathLike):
    """The run's trained model, behind the interface of its kind of data."""
    preset_name, preset, config = saved_config(Path(run_dir))
    from mamlkit.experiments import fewshot, own_tasks
    if preset.experiment is fewshot:
        return _ImageRun(config, Path(run_dir))
    if preset.experiment is own_tasks and config.data:
        return _TableRun(config, Path(run_dir))
    raise MamlkitError(f"{run_dir} is a {preset_name} run; adapt and predict take image and table runs (for "
                       "your own sampler's runs use the Python API: MAML.adapt and MAML.predict)")


def _write(path: Path, data: bytes) -> None:
    """Through the runs' atomic writer: a failed write is one line and leaves no partial file."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _state_bytes(state: dict[str, torch.Tensor], suffix: str) -> bytes:
    """A plain state_dict as safetensors (``.safetensors``) or ``torch.save`` bytes (anything else)."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    if suffix == ".safetensors":
        from safetensors.torch import save
        return save(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def adapted_state_dict(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with the adapted ``params`` in place of the parameters they came from
    (a tied parameter under several names gets its adapted value under each)."""
    adapted = {id(parameter): params[name] for name, parameter in model.named_parameters() if name in params}
    return {name: adapted.get(id(tensor), tensor).detach()
            for name, tensor in model.state_dict(keep_vars=True).items()}


def classified(items: list, logits: torch.Tensor, classes: list[str], labels: list[str] | None
               ) -> tuple[list[dict], dict]:
    """Prediction rows (item, most probable class, its probability, the label if known) and accuracy."""
    confidence, predicted = logits.softmax(dim=-1).max(dim=-1)
    rows = [{"item": item, "prediction": classes[p], "probability": round(c, 6)}
            for item, p, c in zip(items, predicted.tolist(), confidence.tolist())]
    if labels is None:
        return rows, {}
    for row, label in zip(rows, labels):
        row["label"] = label
    return rows, {"accuracy": sum(row["prediction"] == row["label"] for row in rows) / len(rows)}


class _ImageRun:
    """A few-shot image run: N class folders in, N-way classifier out."""

    def __init__(self, config, run_dir: Path):
        from mamlkit.experiments import fewshot
        self.config = config
        self.maml, _ = fewshot.load_trained(config, run_dir)
        self.decode = fewshot.image_decoder(config)
        self.device = next(self.maml.model.parameters()).device

    def steps(self, steps: int | None) -> int:
        return self.config.eval_inner_steps if steps is None else steps

    def _read(self, path):
        from mamlkit.tasks.image_folder import read_images
        images, labels, items = read_images(path, self.decode)
        return images.to(self.device, torch.float32).div_(255), labels, items

    def adapt(self, support_path, steps: int | None) -> tuple[dict, list[str]]:
        x, labels, _ = self._read(support_path)
        classes = sorted(set(labels or ()))
        if labels is None or len(classes) != self.config.ways:
            found = "no class folders" if labels is None else f"{len(classes)} class folders"
            raise MamlkitError(f"support set {support_path} has {found} but the run classifies {self.config.ways} "
                               f"ways: give it {self.config.ways} class folders of labelled images")
        y = torch.tensor([classes.index(label) for label in labels], device=self.device)
        params = self.maml.adapt(x, y, steps=self.steps(steps))
        return {name: p.detach() for name, p in params.items()}, classes

    def export(self, params: dict) -> dict[str, torch.Tensor]:
        return adapted_state_dict(self.maml.model, params)

    @torch.no_grad()
    def predict(self, params: dict, classes: list[str], query_path, steps: int | None) -> tuple[list[dict], dict]:
        x, labels, items = self._read(query_path)
        unknown = sorted(set(labels or ()) - set(classes))
        if unknown:
            raise MamlkitError(f"query set {query_path} has classes {unknown} that the support set lacks "
                               f"({classes}): label the query with the support's class folders")
        # One forward over the whole query set: transductive BatchNorm sees it as evaluation does.
        if len(items) == 1 and any(isinstance(m, TransductiveBatchNorm) for m in self.maml.model.modules()):
            raise MamlkitError(f"query set {query_path} holds one image, but this model normalises over the "
                               "images it is given (transductive BatchNorm, as in evaluation): give it two or more")
        return classified(items, self.maml.predict(x, params, step=self.steps(steps)).cpu(), classes, labels)


class _TableRun:
    """A table run: one task's rows in (no task column needed), the run's MLP on raw features out."""

    def __init__(self, config, run_dir: Path):
        from mamlkit.experiments import own_tasks
        from mamlkit.tasks.table import Scaling
        self.config = config
        problem, saved = own_tasks.table_problem(run_dir)
        self.features, self.classes = saved.pop("features"), saved.pop("classes")
        self.scaling = Scaling(**saved)
        self.maml = own_tasks.load_trained(config, run_dir, problem)[0]["maml"]
        self.device = next(self.maml.model.parameters()).device

    def steps(self, steps: int | None) -> int:
        return self.config.eval_steps if steps is None else steps

    def _read(self, path, labelled: bool | None):
        """(scaled x, y or None, the file's columns); ``labelled=None``: use the target where present."""
        from mamlkit.tasks.table import read_columns, read_examples
        target = self.config.target_column
        columns = read_columns(path, [target] if labelled else [])
        x, y = read_examples(columns, path, self.features, target if target in columns else None, self.classes)
        y = None if y is None else self.scaling.targets(y).to(self.device)
        return self.scaling.inputs(x).to(self.device), y, columns

    def adapt(self, support_path, steps: int | None) -> tuple[dict, list[str] | None]:
        x, y, columns = self._read(support_path, labelled=True)
        tasks = set(map(str, columns.get(self.config.task_column, [None])))
        if len(tasks) > 1:
            raise MamlkitError(f"support table {support_path} holds {len(tasks)} tasks (column "
                               f"{self.config.task_column!r}): give the rows of one task")
        params = self.maml.adapt(x, y, steps=self.steps(steps))
        return {name: p.detach() for name, p in params.items()}, self.classes

    def export(self, params: dict) -> dict[str, torch.Tensor]:
        """The adapted MLP with the scaling folded into its first and last layers: it takes raw features
        and (regression) returns the target in its units."""
        state = adapted_state_dict(self.maml.model, params)
        linear = [name for name, module in self.maml.model.named_modules() if isinstance(module, torch.nn.Linear)]
        mean, std = (torch.tensor(v, dtype=torch.float32, device=self.device)
                     for v in (self.scaling.feature_mean, self.scaling.feature_std))
        first_w, first_b = state[f"{linear[0]}.weight"], state[f"{linear[0]}.bias"]
        state[f"{linear[0]}.weight"] = first_w / std  # W((x - m) / s) + b = (W / s) x + (b - W m / s)
        state[f"{linear[0]}.bias"] = first_b - first_w @ (mean / std)
        if self.classes is None:  # y = f(x) * s_y + m_y
            last = linear[-1]
            state[f"{last}.weight"] = state[f"{last}.weight"] * self.scaling.target_std
            state[f"{last}.bias"] = state[f"{last}.bias"] * self.scaling.target_std + self.scaling.target_mean
        return state

    @torch.no_grad()
    def predict(self, params: dict, classes, query_path, steps: int | None) -> tuple[list[dict], dict]:
        x, y, _ = self._read(query_path, labelled=None)
        output = self.maml.predict(x, params, step=self.steps(steps)).cpu()
        items = list(range(len(output)))  # row numbers of the query table
        if self.classes is not None:
            labels = None if y is None else [self.classes[label] for label in y.tolist()]
            return classified(items, output, self.classes, labels)
        values = output[:, 0] * self.scaling.target_std + self.scaling.target_mean
        rows = [{"item": i, "value": round(v, 6)} for i, v in zip(items, values.tolist())]
        if y is None:
            return rows, {}
        truth = y.cpu()[:, 0] * self.scaling.target_std + self.scaling.target_mean
        for row, value in zip(rows, truth.tolist()):
            row["target"] = round(value, 6)
        return rows, {"mse": ((values - truth) ** 2).mean().item()}
