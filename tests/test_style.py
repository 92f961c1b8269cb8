"""The code a newcomer reads: no function in nas/ runs past 80 lines, but for argparse
builders (one straight sequence of options that reads better whole)."""

from __future__ import annotations

import ast
from pathlib import Path

NAS = Path(__file__).resolve().parents[1] / "nas"
LIMIT = 80
ARGPARSE_BUILDERS = {"build_parser"}  # nas/search.py: every option of a search, in order


def test_no_function_runs_past_80_lines() -> None:
    long = []
    for path in sorted(NAS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT and node.name not in ARGPARSE_BUILDERS:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
