"""The packages import one way: space <- lang <- {compile, graphs} <- data <- scorer <- design
<- search <- cli. A module importing upward (even inside a function) fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "autobuild_dsl"

# What each package may import besides itself (top-level modules such as io are shared).
ALLOWED: dict[str, set[str]] = {
    "space": set(),
    "lang": {"space"},
    "compile": {"space", "lang"},
    "graphs": {"space", "lang", "compile"},
    "data": {"space", "lang", "compile", "graphs"},
    "scorer": {"space", "lang", "compile", "graphs", "data"},
    "design": {"space", "lang", "compile", "graphs", "data", "scorer"},
    "search": {"space", "lang", "compile", "graphs", "data", "scorer", "design"},
    "cli": {"space", "lang", "compile", "graphs", "data", "scorer", "design", "search"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def test_packages_import_only_downward() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(ALLOWED) <= packages, "a layer named here no longer exists"
    unknown = packages - set(ALLOWED) - {"grammar"}
    assert not unknown, f"new package(s) {sorted(unknown)}: give them a place in ALLOWED"
    violations = []
    for package, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                if parts[0] != "autobuild_dsl" or len(parts) < 2:
                    continue
                target = parts[1]
                if target == package or target not in ALLOWED:
                    continue  # itself, or a shared top-level module (io, ...)
                if target not in allowed:
                    where = path.relative_to(PACKAGE.parent)
                    violations.append(f"{where}:{line}: {package} imports {module}")
    assert not violations, "\n".join(violations)
