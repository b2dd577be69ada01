"""The package layout keeps its promises: no import cycles, models/ independent of pipeline/, light commands."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LEVIR_256, require

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "flows", "models")


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every project module ``path`` imports, at module level or inside functions (a hidden cycle counts)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return comps


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # A package's __init__ that only re-exports its children is not an edge back from them.
    return {name: {t for t in _imports(path, name, modules) if not name.startswith(t + ".")}
            for name, path in modules.items()}


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_models_import_nothing_from_pipeline_or_flows():
    bad = {m: sorted(t for t in deps if t.split(".")[0] in ("pipeline", "flows"))
           for m, deps in _graph().items() if m.split(".")[0] == "models"}
    assert {m: d for m, d in bad.items() if d} == {}


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sorted(sys.modules)))"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_evaluating_a_dataset_does_not_import_ray(tmp_path):
    data = require(LEVIR_256)
    code = ("from pipeline.cli import main\n"
            f"assert main(['evaluate', '--model', 'tinycd', '--weights', 'levir', '--data', {str(data)!r}]) == 0")
    loaded = _modules_after(code)
    assert "torch" in loaded and "ray" not in loaded and "prefect" not in loaded


@pytest.mark.parametrize("module", ["pipeline.cli", "flows.archive"])
def test_entry_points_do_not_import_tests(module):
    assert not {m for m in _modules_after(f"import {module}") if m == "tests" or m.startswith("tests.")}


def test_every_imported_distribution_is_declared():
    """Each third-party module the packages import belongs to a distribution pyproject.toml declares."""
    import importlib.metadata as md
    import re

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    declared = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in requirements}
    by_module = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for path in (p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in PACKAGES or top == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in by_module.get(top, [top.replace("_", "-")])}
                if not dists & declared:
                    missing.setdefault(top, str(path.relative_to(REPO)))
    assert missing == {}


PRODUCT = ("pipeline", "flows", "models")


def test_no_product_function_is_longer_than_80_lines():
    long = []
    for root in PRODUCT:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert long == []


def test_pipeline_keeps_its_rooms():
    """At most 16 top-level modules in pipeline/: the engine, products, archive, io, cli and learn are packages."""
    assert len(list((REPO / "pipeline").glob("*.py"))) <= 16


def test_the_product_reads_no_changemap_variable_but_the_cache():
    """Test and benchmark hooks are seams (classes and callbacks passed in), never environment variables."""
    import re

    read = re.compile(r"""environ(?:\.get)?\s*[\[(]\s*["'](CHANGEMAP_\w+)|getenv\(\s*["'](CHANGEMAP_\w+)""")
    names = {m for root in PRODUCT for path in (REPO / root).rglob("*.py")
             for pair in read.findall(path.read_text()) for m in pair if m}
    assert names <= {"CHANGEMAP_CACHE"}, names
