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


def test_a_companion_run_adds_its_rows_on_the_same_test_tasks_only(tmp_path):
    import json
    import shutil

    import pytest

    script = load_script()
    main, oracle = tmp_path / "main", tmp_path / "oracle"
    for folder in (main, oracle):
        folder.mkdir()
        shutil.copy(ROOT / "benchmarks/results/rl-2dnav/config.json", folder)
    results = json.loads((ROOT / "benchmarks/results/rl-2dnav/results.json").read_text())
    (main / "results.json").write_text(json.dumps(results))
    companion = {"tasks": results["tasks"], "results": {"oracle": {"return": [-5.0, -4.0], "ci95": [1.0, 1.0]},
                                                        "maml": {"return": [0.0, 0.0], "ci95": [0.0, 0.0]}}}
    (oracle / "results.json").write_text(json.dumps(companion))
    merged = script.table([main, oracle])
    assert merged.startswith(script.table([main])) and merged.endswith("| oracle | -5.0 ± 1.0 | -4.0 ± 1.0 |")
    companion["tasks"] = companion["tasks"][1:]
    (oracle / "results.json").write_text(json.dumps(companion))
    with pytest.raises(SystemExit, match="other test tasks"):
        script.table([main, oracle])
