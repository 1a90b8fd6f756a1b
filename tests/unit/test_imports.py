"""Layers import downwards only: no module of rollwise imports one that imports it back
(imports inside functions count: they hide a circle, they do not remove it)."""

import ast
from pathlib import Path

import rollwise

SRC = Path(rollwise.__file__).parent


def imports() -> dict[str, set[str]]:
    mods = {
        ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in SRC.rglob("*.py")
    }
    out: dict[str, set[str]] = {}
    for mod, path in mods.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        out[mod] = {n for n in names if n in mods and n != mod}
    return out


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return False

    circles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert circles == []
