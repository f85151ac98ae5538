"""Many small tasks in one table (CSV or parquet): each row is an example, a task column groups the
rows into tasks, a target column holds what to predict (a number for regression, a class for
classification) and the features are the other columns, or the ones listed.

Features (and regression targets) are standardised with the mean and standard deviation of the
training tasks' rows (:class:`Scaling`), so tables in any units train with the usual rates; a run
stores its scaling, and exported weights have it folded in (they take raw features).
"""

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mamlkit.errors import MamlkitError


class TaskBatch(NamedTuple):
    support_x: torch.Tensor  # [T, K, features]
    support_y: torch.Tensor  # [T, K, 1] float (regression) or [T, K] int64 (classification)
    query_x: torch.Tensor
    query_y: torch.Tensor


def read_columns(path: str | os.PathLike, needed=()) -> dict[str, np.ndarray]:
    """Every column of a .csv or .parquet file as numpy arrays; the ``needed`` ones must be there."""
    path = Path(path).expanduser()
    import pyarrow  # imported here: only table runs need it
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet
            table = pyarrow.parquet.read_table(path)
        else:
            import pyarrow.csv
            table = pyarrow.csv.read_csv(path)
    except FileNotFoundError:
        raise MamlkitError(f"table {path} does not exist: pass a .csv or .parquet file") from None
    except (pyarrow.ArrowException, OSError) as e:
        raise MamlkitError(f"table {path} is unreadable ({str(e).splitlines()[0]}): give a CSV with a header "
                           "row or a parquet file") from None
    missing = [name for name in needed if name not in table.column_names]
    if missing:
        raise MamlkitError(f"table {path} lacks the column(s) {missing}; it has {table.column_names}: fix the "
                           "column names (--task-column, --target-column, --features)")
    if table.num_rows == 0:
        raise MamlkitError(f"table {path} has no rows: give it one row per example")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def numeric(values: np.ndarray, column: str, path, hint: str) -> np.ndarray:
    """The column as float64, or one line naming the column, a bad value and ``hint``."""
    try:
        result = values.astype(np.float64)
    except (ValueError, TypeError):
        bad = next(v for v in values if not _is_number(v))
        raise MamlkitError(f"column {column!r} of {path} is not numeric (e.g. {bad!r}): {hint}") from None
    if np.isnan(result).any():
        raise MamlkitError(f"column {column!r} of {path} has empty cells (row {int(np.isnan(result).argmax())}): "
                           "fill or drop them")
    return result


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def read_examples(columns: dict[str, np.ndarray], path, features: list[str], target: str | None,
                  classes: list[str] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(features [rows, F] float64, targets or None where ``target`` is None) from ``read_columns(path)``.
    Targets are float64 [rows, 1] or, with ``classes``, int64 indices into ``classes``."""
    missing = [name for name in [*features, *([target] if target else [])] if name not in columns]
    if missing:
        raise MamlkitError(f"table {path} lacks the column(s) {missing}; it has {list(columns)}: give it the "
                           "run's columns")
    hint = "convert it to numbers or leave it out with --features"
    x = np.stack([numeric(columns[name], name, path, hint) for name in features], axis=1)
    if target is None:
        return x, None
    if classes is None:
        y = numeric(columns[target], target, path, "pass --problem classification for class labels")[:, None]
    else:
        labels = [str(v) for v in columns[target]]
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise MamlkitError(f"column {target!r} of {path} has classes {unknown[:5]} that the run does not know "
                               f"({classes[:10]}): use the run's classes")
        index = {name: i for i, name in enumerate(classes)}
        y = np.array([index[label] for label in labels], dtype=np.int64)
    return x, y


@dataclass
class Scaling:
    """Standardisation of features (and regression targets) by the training rows' statistics."""

    feature_mean: list[float]
    feature_std: list[float]
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray | None) -> "Scaling":
        std = lambda v: np.where(v.std(axis=0) > 0, v.std(axis=0), 1.0)  # noqa: E731 (constant columns: 1)
        if y is None:
            return cls(x.mean(axis=0).tolist(), std(x).tolist())
        return cls(x.mean(axis=0).tolist(), std(x).tolist(), float(y.mean()), float(std(y.reshape(-1))))

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((x - self.feature_mean) / self.feature_std, dtype=torch.float32)

    def targets(self, y: np.ndarray) -> torch.Tensor:
        if y.dtype == np.int64:
            return torch.as_tensor(y)
        return torch.as_tensor((y - self.target_mean) / self.target_std, dtype=torch.float32)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Table:
    """A table's examples grouped by task, scaled by the training tasks' statistics."""

    features: list[str]
    x: torch.Tensor  # float32 [rows, F], scaled
    y: torch.Tensor  # float32 [rows, 1] scaled, or int64 [rows]
    task_names: list[str]  # sorted
    task_rows: list[np.ndarray]  # row indices of each task
    classes: list[str] | None  # classification: output i is classes[i]
    scaling: Scaling


def load_table(path, task_column: str, target_column: str, features=(), problem: str = "regression",
               train_tasks=None) -> Table:
    """The table at ``path``; ``features`` default to every column but the task and target ones.
    ``train_tasks(task_names) -> indices`` picks the tasks whose rows set the scaling (default: all)."""
    if task_column == target_column:
        raise MamlkitError(f"the task column and the target column are both {task_column!r}: pass two columns")
    columns = read_columns(path, [task_column, target_column, *features])
    features = list(features) or [name for name in columns if name not in (task_column, target_column)]
    if not features:
        raise MamlkitError(f"table {path} has no feature columns besides {task_column!r} and {target_column!r}")
    classes = sorted({str(v) for v in columns[target_column]}) if problem == "classification" else None
    x, y = read_examples(columns, path, features, target_column, classes)
    tasks = np.array([str(v) for v in columns[task_column]])
    task_names, inverse = np.unique(tasks, return_inverse=True)
    task_rows = [np.flatnonzero(inverse == t) for t in range(len(task_names))]
    chosen = train_tasks(list(task_names)) if train_tasks else range(len(task_names))
    rows = np.concatenate([task_rows[t] for t in chosen]) if len(chosen) else np.arange(len(x))
    scaling = Scaling.fit(x[rows], None if classes else y[rows])
    return Table(features, scaling.inputs(x), scaling.targets(y), task_names.tolist(), task_rows, classes, scaling)


class TableTasks:
    """Draws tasks from some of a table's tasks: ``support`` + ``query`` distinct rows of a random task."""

    def __init__(self, table: Table, tasks, support: int, query: int, split: str = "train"):
        self.table, self.tasks = table, list(tasks)
        if not self.tasks:
            raise MamlkitError(f"the {split} split has no tasks: raise its share with --split-fractions")
        for t in self.tasks:
            rows = len(table.task_rows[t])
            if rows < support + query:
                raise MamlkitError(f"task {table.task_names[t]!r} has {rows} rows, fewer than {support} support + "
                                   f"{query} query: lower --support or --query, or drop the task")
        longest = max(len(table.task_rows[t]) for t in self.tasks)
        self.rows = torch.full((len(self.tasks), longest), -1, dtype=torch.int64)
        for i, t in enumerate(self.tasks):
            self.rows[i, :len(table.task_rows[t])] = torch.as_tensor(table.task_rows[t])
        self.support, self.query = support, query
        self.classes = len(table.classes) if table.classes else None  # outputs of a classifier

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        which = torch.randint(len(self.tasks), (num_tasks,), generator=generator)
        rows = self.rows[which]
        keys = torch.rand(rows.shape, generator=generator, dtype=torch.float64).masked_fill_(rows < 0, -1.0)
        picked = rows.gather(1, keys.topk(self.support + self.query, dim=1).indices)  # distinct rows of the task
        x, y = self.table.x[picked], self.table.y[picked]
        k = self.support
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
