"""`pip install embslim` is enough for train, search and bench: every third-party module the
package imports is a core dependency in pyproject.toml, or an optional one that
`embslim.extras` maps to its pip extra and checks before importing."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from embslim.extras import OPTIONAL

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SOURCES = sorted((ROOT / "src" / "embslim").rglob("*.py"))


def names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of requirement strings ('scikit-learn>=1.2' -> 'scikit-learn')."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group()).lower() for r in requirements}


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it, for every absolute import that is neither stdlib nor embslim."""
    found: dict[str, set[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for top in {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"embslim"}:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_core_dependency_or_a_named_extra():
    core, extras = names(PROJECT["dependencies"]), PROJECT["optional-dependencies"]
    installed = packages_distributions()
    for module, files in third_party_imports().items():
        dists = names(installed.get(module, []))
        if not dists and module in OPTIONAL:
            assert OPTIONAL[module] in extras, f"{module}: extra {OPTIONAL[module]!r} missing from pyproject.toml"
            continue  # an optional module not installed here: its extra is named, its distribution unknown
        assert dists, f"{module} (imported by {sorted(files)}) is not installed here, so its distribution is unknown"
        allowed = names(extras[OPTIONAL[module]]) if module in OPTIONAL else core
        assert dists & allowed, f"{module} (imported by {sorted(files)}) comes from {dists}, not in {sorted(allowed)}"


def optional_imports(tree: ast.AST) -> set[tuple[int, str]]:
    """(line, module) of every import of a module in OPTIONAL under `tree`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found |= {(node.lineno, top) for top in {m.split(".")[0] for m in modules} & set(OPTIONAL)}
    return found


def is_require_call(statement: ast.stmt) -> str | None:
    """The module of a `require("module", ...)` statement, else None."""
    call = statement.value if isinstance(statement, ast.Expr) else None
    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "require":
        return call.args[0].value
    return None


def test_optional_modules_are_imported_only_after_require_in_the_same_function():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        guarded = set()
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            required = set()
            for statement in function.body:
                required.add(is_require_call(statement))
                guarded |= {(line, m) for line, m in optional_imports(statement) if m in required}
        unguarded = optional_imports(tree) - guarded
        assert not unguarded, f"{path.name}: optional modules imported without require() first at {sorted(unguarded)}"
