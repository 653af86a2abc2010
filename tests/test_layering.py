"""Data flows one way: workflows -> stages -> models -> pipeline. Checked on every import in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import unimo_pipe

PACKAGE = Path(unimo_pipe.__file__).parent
# What each layer must never import. The CLI (pipeline/cli.py) is the entry point and may reach every layer.
FORBIDDEN = {
    "pipeline": ("unimo_pipe.stages", "unimo_pipe.workflows", "unimo_pipe.models"),
    "models": ("unimo_pipe.stages", "unimo_pipe.workflows"),
    "stages": ("unimo_pipe.workflows", "unimo_pipe.pipeline.runner"),
}
ENTRY_POINTS = {"pipeline/cli.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:  # `from a.b import c` may import module a.b.c
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_layer_imports_a_layer_above_it():
    breaches = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            if path.relative_to(PACKAGE).as_posix() in ENTRY_POINTS:
                continue
            breaches += [f"{path.relative_to(PACKAGE)} imports {name}" for name in imported_modules(path)
                         if name.startswith(forbidden)]
    assert breaches == []
