"""README.md's result tables are what benchmarks/readme_tables.py makes of the committed run folders."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_committed_runs():
    script = load_script()
    readme = (ROOT / "README.md").read_text()
    assert len(script.MARKED.findall(readme)) >= 3
    assert script.regenerate(readme) == readme, "run python benchmarks/readme_tables.py"


def test_a_stale_table_is_detected():
    script = load_script()
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| 5 | maml | "))
    stale = readme.replace(row, row.replace("| 5 | maml | ", "| 5 | maml | 9", 1), 1)  # one number changed
    assert stale != readme and script.regenerate(stale) == readme
