"""One way between the apps: batches builds on topics, topics never imports batches."""
from __future__ import annotations

import ast
from pathlib import Path

import topics

TOPICS_DIR = Path(topics.__file__).resolve().parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (inside functions too), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__", "import_string",
        ) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.append((node.lineno, node.args[0].value))
    return found


def test_no_module_under_topics_imports_batches():
    offenders = [
        f"{path.relative_to(TOPICS_DIR.parent)}:{line} imports {module}"
        for path in sorted(TOPICS_DIR.rglob("*.py"))
        for line, module in imported_modules(path)
        if module == "batches" or module.startswith("batches.")
    ]

    assert offenders == []


def test_the_check_sees_an_import_hidden_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from batches.models import Newsletter\n    import batches.ledger\n")

    assert [module for _, module in imported_modules(sample)] == ["batches.models", "batches.ledger"]
