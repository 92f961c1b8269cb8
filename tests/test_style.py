"""The code a newcomer reads: no function in nas/ (any folder) runs past 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

NAS = Path(__file__).resolve().parents[1] / "nas"
LIMIT = 80


def test_no_function_runs_past_80_lines() -> None:
    long = []
    for path in sorted(NAS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(
                        f"{path.relative_to(NAS)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert not long, long


def test_gpu_tests_are_named_by_the_cuda_marker_alone() -> None:
    """A test skipped by its own `torch.cuda.is_available()` check would run on the CPU
    part of a GPU run, or be left out of `pytest -m cuda` (benchmarks/gpu_all.sh)."""
    tests = Path(__file__).resolve().parent
    own = [
        p.name
        for p in sorted(tests.rglob("test_*.py"))
        if p.name != "test_style.py" and "skipif(not torch.cuda.is_available()" in p.read_text()
    ]
    assert not own, own
