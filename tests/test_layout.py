"""The house a newcomer walks: commands on top, the library in stage folders below them.

Read from the code's own imports (every `import` statement, at the top of a module or
inside a function or an `if TYPE_CHECKING:` block alike): no library module imports a
command module, and no modules, nor stage folders, import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

NAS = Path(__file__).resolve().parents[1] / "nas"
STAGES = (
    "arch",
    "data",
    "training",
    "study",
    "parallel",
    "results",
    "deploy",
)  # the pipeline's order
SHARED = {"nas.errors"}  # the top level's one library module: what every layer raises


def module_name(path: Path) -> str:
    parts = path.relative_to(NAS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(NAS.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The nas modules `path` imports, wherever the statement stands."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from nas.x import y`: y may itself be a module (nas.x.y)
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != "nas"}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def is_command(m: str) -> bool:
    """A top-level module of nas that is not the shared errors: a `python -m nas.X`
    command, nas.cli (what the commands share) or the package's face."""
    return m.count(".") == 1 and m not in SHARED and m.split(".")[1] not in STAGES


def stage(m: str) -> str:
    """The stage folder of a library module, or "" for the top level."""
    parts = m.split(".")
    return parts[1] if len(parts) >= 3 or (len(parts) == 2 and parts[1] in STAGES) else ""


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_what_it_checks() -> None:
    """The scan finds lazy and type-only imports too (the ones that hid a circle)."""
    g = graph()
    assert "nas.parallel.run" in g["nas.search"]
    assert "nas.parallel.run" in g["nas.parallel.slurm"]
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_every_library_module_stands_in_a_stage_folder() -> None:
    loose = [m for m in modules() if m.count(".") >= 2 and stage(m) not in STAGES]
    assert not loose, loose
    assert sorted({stage(m) for m in modules()} - {""}) == sorted(STAGES)


def test_no_library_module_imports_a_command_module() -> None:
    bad = [
        f"{m} imports {c}"
        for m, deps in graph().items()
        if not is_command(m) and m != "nas"
        for c in sorted(deps)
        if is_command(c)
    ]
    assert not bad, bad


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert circles(graph()) == []


def test_no_stage_folders_import_each_other_in_a_circle() -> None:
    folders: dict[str, set[str]] = {}
    for m, deps in graph().items():
        if stage(m):
            folders.setdefault(stage(m), set()).update(stage(d) for d in deps if stage(d))
    for s in folders:
        folders[s].discard(s)
    assert circles(folders) == [], folders
