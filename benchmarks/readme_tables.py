"""Regenerate README.md's result tables from the committed run folders, so they cannot go stale.

A table is marked in README.md by a line ``<!-- table from benchmarks/results/FOLDER -->`` before
it and ``<!-- end of table -->`` after it; it is the run's own ``format_table`` (the table the run
printed) applied to its ``results.json``. ``FOLDER + OTHER`` adds the rows of a companion run on the
same test tasks (e.g. an RL oracle trained alone: ``--no-maml --no-pretrained --oracle``);
``FOLDER:training_tasks`` shows a Meta-World run's scores on training tasks instead of held-out ones.
``<!-- paired table from benchmarks/results/BASE + benchmarks/results/RUN ... -->`` is instead
``paired.py --table``: few-shot runs against BASE, task by task, beside their papers' figures.
``--check`` only reports whether README.md is up to date (exit 1 if not; tests/test_readme_tables.py runs it).

    python benchmarks/readme_tables.py [--check]
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import paired  # noqa: E402  (benchmarks/paired.py, beside this file)

MARKED = re.compile(r"(<!-- (paired )?table from (benchmarks/results/[\w.-]+(?::training_tasks)?(?: \+ benchmarks/results/[\w.-]+)*) -->\n)(.*?)"
                    r"(<!-- end of table -->)", re.S)


def table(folders: list[Path], section: str | None = None) -> str:
    """The runs' results (or their ``section``, e.g. training_tasks) as the first run's experiment prints
    them; a companion adds the rows the first lacks, and must have been evaluated on the same test tasks."""
    from mamlkit.engine.run import saved_config

    _, preset, _ = saved_config(folders[0])
    runs = [json.loads((folder / "results.json").read_text()) for folder in folders]
    runs = [run[section] for run in runs] if section else runs
    rows = dict(runs[0].get("results", runs[0]))
    for folder, run in zip(folders[1:], runs[1:]):
        if run.get("tasks") != runs[0].get("tasks"):
            raise SystemExit(f"{folder} was evaluated on other test tasks than {folders[0]}")
        rows.update({name: row for name, row in run["results"].items() if name not in rows})
    return preset.experiment.format_table(rows)


def markdown(text: str) -> str:
    """A blank line between the table's rows and a note under it (else Markdown reads it as a row)."""
    lines = text.split("\n")
    return "\n".join(line if not (i and lines[i - 1].startswith("|") and not line.startswith("|")) else "\n" + line
                     for i, line in enumerate(lines))


def regenerate(readme: str) -> str:
    def replacement(m) -> str:
        first, *companions = m[3].split(" + ")
        first, _, section = first.partition(":")
        folders = [ROOT / f for f in (first, *companions)]
        made = paired.comparison_table(folders[0], folders[1:]) if m[2] else markdown(table(folders, section or None))
        return f"{m[1]}{made}\n{m[5]}"
    return MARKED.sub(replacement, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    path = ROOT / "README.md"
    current = path.read_text()
    updated = regenerate(current)
    if args.check:
        if updated != current:
            print("README.md tables differ from benchmarks/results; run python benchmarks/readme_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(updated)
    print(f"{len(MARKED.findall(current))} tables regenerated in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
