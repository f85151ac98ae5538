"""The core stays readable: no function or method in it runs over 40 lines (issue 12).

The core is functional.py, the MAML module and its parts, the strategies and the families in
algorithms/; ``wc -l`` over ``CORE`` gives its length (docs/design.md).
"""

import ast
from pathlib import Path

import mamlkit

PACKAGE = Path(mamlkit.__file__).parent
CORE = [PACKAGE / name for name in ("functional.py", "maml.py", "selection.py", "mapping.py", "rates.py",
                                    "strategies.py")] + sorted((PACKAGE / "algorithms").glob("*.py"))


def long_functions(path: Path, limit: int) -> list[str]:
    """``file:line name (n lines)`` for every function in ``path`` longer than ``limit`` lines."""
    tree = ast.parse(path.read_text())
    return [f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_in_the_core_is_longer_than_40_lines():
    assert all(path.exists() for path in CORE) and len(CORE) > 6
    assert [entry for path in CORE for entry in long_functions(path, 40)] == []


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(40))
    (tmp_path / "long.py").write_text(f"class A:\n    def f(self):\n{body.replace('    ', '        ')}\n")
    assert long_functions(tmp_path / "long.py", 40) == ["long.py:2 f (41 lines)"]
