"""The layering DESIGN.md promises, checked on the source: measures see models only through the
anatomy, and import neither the store nor the models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MEASURES = sorted((Path(__file__).parents[1] / "grokscope" / "measures").glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MEASURES, ids=lambda p: p.name)
def test_measures_import_neither_store_nor_models(path):
    bad = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            if any(part in ("store", "models", "train") for part in mod.strip(".").split(".")[-1:]) \
                    and (node.level == 2 or mod.startswith("grokscope.")):
                bad.append(mod)
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.startswith(("grokscope.store", "grokscope.models"))]
    assert not bad, f"{path.name} imports {bad}"


_MODEL_TYPES = {"Linear", "Embedding", "ModuleList", "Sequential"}


@pytest.mark.parametrize("path", MEASURES, ids=lambda p: p.name)
def test_measures_do_not_probe_model_internals(path):
    """No ``hasattr``; no ``getattr(model, ...)``; no ``isinstance(m, nn.Linear)`` searches:
    roles come from :mod:`grokscope.anatomy`."""
    bad = []
    for node in ast.walk(_tree(path)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id == "hasattr":
            bad.append(f"line {node.lineno}: hasattr")
        if node.func.id == "getattr" and node.args and "model" in ast.unparse(node.args[0]):
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        if node.func.id == "isinstance" and len(node.args) == 2:
            kinds = ast.unparse(node.args[1])
            if any(f"nn.{t}" in kinds or f"torch.nn.{t}" in kinds for t in _MODEL_TYPES):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not bad, f"{path.name} probes the model: {bad}"
