"""The package layout shows the data flow, and imports follow it (CONTRIBUTING rule 42): the change log
knows nothing of versions, the deployment side nothing of serving, and no two modules import each other,
not even for type checking only."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "monorec"

# package -> packages it must never import: the arrows point down the data flow only
FORBIDDEN = {
    "monorec.stream": ("monorec.deployment", "monorec.serving", "monorec.feedback"),
    "monorec.index": ("monorec.deployment", "monorec.serving", "monorec.stream"),
    "monorec.retrieval": ("monorec.deployment", "monorec.serving"),
    "monorec.deployment": ("monorec.serving", "monorec.feedback"),
    "monorec.data": ("monorec.deployment", "monorec.serving", "monorec.stream"),
    "monorec.models": ("monorec.deployment", "monorec.serving", "monorec.stream"),
}


def module_imports(root: Path, package: str = "monorec") -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (top level, functions, TYPE_CHECKING blocks).
    ``from p import name`` counts as importing ``p.name`` when that is a module, else ``p``."""
    paths = {}
    for p in root.rglob("*.py"):
        parts = [package, *p.relative_to(root).with_suffix("").parts]
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    out: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in paths else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        out[name] = {m for m in found if m in paths and m != name}
    return out


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of modules importing each other, each found once from its smallest member (a package's
    ``__init__`` that re-exports its modules counts as a module)."""
    cycles: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(imports.get(node, ())):
            if nxt == start:
                cycles.append(path)
            elif nxt > start and nxt not in path:
                walk(start, nxt, [*path, nxt])

    for start in sorted(imports):
        walk(start, start, [start])
    return cycles


def _is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_data_flow_points_one_way() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in module_imports(SRC).items()
        for package, banned in FORBIDDEN.items()
        if _is_in(module, package)
        for target in targets
        if any(_is_in(target, b) for b in banned)
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_modules_import_each_other() -> None:
    assert import_cycles(module_imports(SRC)) == []


def test_the_checks_catch_a_cycle_hidden_behind_type_checking(tmp_path: Path) -> None:
    """The two checks above would pass on a checker that sees nothing: prove they see what they must."""
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "__init__.py").write_text("")
    (tmp_path / "serving" / "engine.py").write_text("from pkg.serving.precomputed import Tables\n")
    (tmp_path / "serving" / "precomputed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.serving.engine import Engine\n"
    )
    (tmp_path / "stream.py").write_text("def f():\n    from pkg.serving import engine\n")
    imports = module_imports(tmp_path, "pkg")
    assert imports["pkg.stream"] == {"pkg.serving.engine"}
    assert import_cycles(imports) == [["pkg.serving.engine", "pkg.serving.precomputed"]]
