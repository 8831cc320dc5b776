"""The package's layout shows its architecture (docs/architecture.md): subpackages by concern, imports
flowing one way, small modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peffnet"

# Lower levels never import higher ones; two packages on one level never import each other.
LEVELS = {
    "errors": 0, "version": 0,
    "settings": 1, "layers": 1, "files": 1,
    "models": 2, "data": 2,
    "fusion": 3, "resolution": 3, "checkpoint": 3, "runtime": 3,
    "training": 4, "measure": 4,
    "serving": 5, "study": 5,
    "cli": 6,
    "__main__": 7, "__init__": 7,  # the facade: `import peffnet` and `python -m peffnet`
}


def unit(module: Path) -> str:
    """The package (or top-level module) a source file belongs to: ``training``, ``settings``, ``__init__``."""
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_units(module: Path) -> set[str]:
    """The peffnet units a module imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "peffnet" \
                else [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "peffnet":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found - {"__version__"}


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(module: Path) -> None:
    own = unit(module)
    assert own in LEVELS, f"{own} has no place in the layering of tests/test_layout.py and docs/architecture.md"
    for other in imported_units(module) - {own}:
        assert other in LEVELS, other
        assert LEVELS[other] < LEVELS[own], f"{module.relative_to(PACKAGE)} imports peffnet.{other}"


def module_name(path: Path) -> str:
    """``peffnet.layers.norm_act`` for ``layers/norm_act.py``, ``peffnet.layers`` for its ``__init__.py``."""
    parts = ("peffnet", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_modules_import_each_other() -> None:
    """Imports flow one way between modules too, inside a package (function-level imports included): no
    cycle of modules importing each other, such as a layer module and the module of the layers it builds."""
    modules = {module_name(p): p for p in SOURCES}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names)
        graph[name] = deps & modules.keys() - {name}
    done: set[str] = set()

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        for dep in sorted(graph[name]):
            if found := cycle_from(dep, path + [name]):
                return found
        done.add(name)
        return None

    cycles = (cycle_from(name, []) for name in sorted(graph))
    assert next((c for c in cycles if c), None) is None


def test_modules_are_small_and_the_top_level_is_short() -> None:
    too_long = {str(p.relative_to(PACKAGE)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 400}
    assert not too_long
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 8, top
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {
        "layers", "models", "fusion", "data", "runtime", "training", "measure", "serving", "study", "cli"}


def test_modules_with_a_forward_do_not_postpone_annotations() -> None:
    """``torch.fx`` copies the annotations of a traced ``forward`` into the code it generates, and TorchScript
    cannot resolve them there as strings (``from __future__ import annotations``): a traced model would not
    script (docs/architecture.md)."""
    def postpones(tree: ast.Module) -> bool:
        return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                   any(a.name == "annotations" for a in n.names) for n in tree.body)

    def has_forward(tree: ast.Module) -> bool:
        return any(isinstance(n, ast.ClassDef) and any(isinstance(f, ast.FunctionDef) and f.name == "forward"
                                                       for f in n.body) for n in ast.walk(tree))

    trees = {p: ast.parse(p.read_text()) for p in SOURCES}
    assert any(has_forward(t) for t in trees.values())
    assert [str(p.relative_to(PACKAGE)) for p, t in trees.items() if has_forward(t) and postpones(t)] == []


def test_no_comment_cites_an_issue() -> None:
    roots = [PACKAGE, PACKAGE.parents[1] / "tests", PACKAGE.parents[1] / "benchmarks", PACKAGE.parents[1] / "scripts"]
    cited = [str(p) for root in roots for p in root.rglob("*.py") if re.search(r"\bissues? #?\d", p.read_text(), re.I)]
    assert not cited


def test_the_schedulers_units_exist() -> None:
    """tests/conftest.py's scheduling hints name test files that exist and the shared runs it groups."""
    from conftest import LONGEST_FIRST, SHARED_RUNS, shared_run_of

    root = PACKAGE.parents[1]
    for unit_name in LONGEST_FIRST:
        assert unit_name in SHARED_RUNS or (root / unit_name).is_file(), unit_name
    assert shared_run_of(root / "tests" / "test_export.py") == "served_run"
    assert shared_run_of(root / "tests" / "test_finetune.py") == "tiny_parent"
    assert shared_run_of(root / "tests" / "test_models.py") is shared_run_of(Path(__file__)) is None
