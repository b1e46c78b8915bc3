"""The shape of the code (issue 16): data flows one way with no import cycle, and only
``pipeline/dataset.py`` knows the file names of the dataset format."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "dcgan", "demo")
# The dataset directory's own names (a run directory has a config.json of its own).
FORMAT_NAMES = ("manifest.jsonl", "COMPLETE", "progress.json", ".partial", "stats.json",
                "images.npy", "thumbs.npy", "rejected.jsonl", "duplicates.jsonl")


def _modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / "cli.py"]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in files}


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every import of a project module, at module level or inside functions."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names]
            for n in names:
                r = resolve(n)
                if r and r != m and not (p.name == "__init__.py" and r.startswith(m + ".")):
                    found.add(r)
        graph[m] = found
    return graph


def test_no_import_cycles_and_data_flows_one_way():
    graph = _imports(_modules())

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            for n in graph[todo.pop()]:
                if n == b:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    assert not [m for m in graph if reaches(m, m)]
    # cli -> demo -> dcgan -> pipeline: nothing imports upward.
    rank = {"cli": 3, "demo": 2, "dcgan": 1, "pipeline": 0}
    upward = [(m, n) for m, targets in graph.items() for n in targets
              if rank[n.split(".")[0]] > rank[m.split(".")[0]]]
    assert not upward, upward


def _code_strings(path: Path) -> list[str]:
    """String constants of the code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_only_the_dataset_module_names_the_format_files():
    found = [(str(p.relative_to(ROOT)), s) for m, p in _modules().items()
             if not m.startswith("pipeline.dataset") for s in _code_strings(p)
             if any(name in s for name in FORMAT_NAMES)]
    assert not found, found
