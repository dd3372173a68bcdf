"""Loading a checkpoint or imported weights must never run code from the file."""

from __future__ import annotations

import ast
import subprocess

from checkout import REPO


def torch_loads_without_weights_only(source: str) -> list[int]:
    """Lines of ``torch.load(...)`` calls that do not pass ``weights_only=True``."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value
                for k in node.keywords
            )
            if not safe:
                bad.append(node.lineno)
    return bad


def test_every_torch_load_is_weights_only():
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert files
    offenders = {
        f: lines
        for f in files
        if (lines := torch_loads_without_weights_only((REPO / f).read_text()))
    }
    assert offenders == {}


def test_the_check_catches_an_unsafe_load():
    assert torch_loads_without_weights_only("import torch\ntorch.load('x.pt')\n") == [2]
    assert torch_loads_without_weights_only("torch.load(f, weights_only=False)") == [1]
    assert torch_loads_without_weights_only("torch.load(f, weights_only=True)") == []
