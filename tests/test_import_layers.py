"""The package's import layering: each layer imports only the layers below it (function-level imports
included), so there are no cycles and the model and pipeline code stay usable without the layers above."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "wan"
# Lowest first. A module may import its own layer and those before it.
LAYERS = [
    {"wan", "wan.errors", "wan.checks", "wan.generation_settings", "wan.cli", "wan.media"},
    {"wan.models"},
    {"wan.pipeline"},
    {"wan.loading", "wan.preprocess", "wan.evaluation"},
    {"wan.training", "wan.convert", "wan.generate"},
    {"wan.app"},
]


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage (wan.pipeline) or top-level module (wan.generate)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _layer(module: str) -> int:
    unit = _unit(module)
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS")


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    start = len(parts) - 1 - parts[::-1].index("wan")  # from the innermost folder named wan
    return ".".join(parts[start:]).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "wan" or name.startswith("wan.")}


def test_no_module_imports_a_higher_layer() -> None:
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        for target in _imports(path):
            if _layer(target) > _layer(module):
                violations.append(f"{module} imports {target}")
    assert violations == []


def test_the_layering_check_sees_relative_and_function_level_imports(tmp_path) -> None:
    package = tmp_path / "wan" / "models"
    package.mkdir(parents=True)
    (package / "x.py").write_text("def f():\n    from ..pipeline.pipeline import P\n    from . import y\n")
    assert _imports(package / "x.py") == {"wan.pipeline.pipeline", "wan.models"}
