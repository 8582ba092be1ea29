"""Old module paths keep importing the moved modules (with a warning naming the new one), and imports run one way."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

from rfdetr.util.moved import MOVED_MODULES

PACKAGE = Path(__file__).resolve().parents[2] / "rfdetr"


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_path_gives_the_new_module_with_a_warning(old: str) -> None:
    parent = old.rpartition(".")[0]
    if parent in MOVED_MODULES:  # a moved package: imported first, so that only ``old`` warns below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module(parent)
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=MOVED_MODULES[old].replace(".", r"\.")):
        module = importlib.import_module(old)
    new = importlib.import_module(MOVED_MODULES[old])
    assert module is new
    assert new.__spec__ is not None and new.__spec__.name == MOVED_MODULES[old]  # its own spec is kept
    sys.modules.pop(old, None)


def test_old_names_users_hold() -> None:
    with pytest.warns(DeprecationWarning):
        from rfdetr.onnx_model import OnnxModel
    from rfdetr.deploy.runtime.runner import OnnxModel as new

    assert OnnxModel is new
    from rfdetr.checkpoint import load_checkpoint_file  # a package now, with the old module's names

    assert callable(load_checkpoint_file)


def test_unknown_paths_still_fail() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("rfdetr.no_such_module")


def _imports(path: Path) -> set[str]:
    """Every ``rfdetr.*`` module a file imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rfdetr"):
            found.add(node.module)
            if node.module == "rfdetr":
                found.update(f"rfdetr.{a.name}" for a in node.names if not a.name.startswith("__"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rfdetr"))
    return found


# Layers from the bottom up; a module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("rfdetr.config", "rfdetr.util", "rfdetr.version"),
    ("rfdetr.models", "rfdetr.losses", "rfdetr.data"),
    ("rfdetr.checkpoint",),
    ("rfdetr.train", "rfdetr.deploy"),
    ("rfdetr.detr",),
    ("rfdetr.demo", "rfdetr.export", "rfdetr.predict", "rfdetr.evaluate"),
]


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer")


def test_imports_run_downward() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package's lazy re-exports
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__")
        for target in _imports(path):
            if target == "rfdetr":
                continue
            if _layer(target) > _layer(module):
                upward.append(f"{module} -> {target}")
    assert not upward, upward
    # train and deploy are siblings: neither imports the other
    crossing = [
        f"{p} -> {t}"
        for folder, other in (("deploy", "rfdetr.train"), ("train", "rfdetr.deploy"))
        for p in PACKAGE.joinpath(folder).rglob("*.py")
        for t in _imports(p)
        if t.startswith(other)
    ]
    assert not crossing, crossing


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at module level or in functions). ``from a.b import c`` counts as
    an import of ``a.b.c`` when that is a module, else of ``a.b``."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package.name:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == package.name)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    assert import_cycles(import_graph()) == []


def test_import_cycles_are_found() -> None:
    """The check above can fail: two modules importing each other (one of them inside a function) are a cycle."""
    graph = {"rfdetr.a": {"rfdetr.b"}, "rfdetr.b": {"rfdetr.c"}, "rfdetr.c": {"rfdetr.a"}, "rfdetr.d": {"rfdetr.a"}}
    assert import_cycles(graph) == [["rfdetr.a", "rfdetr.b", "rfdetr.c"]]


def test_nothing_imports_the_package_root() -> None:
    """``from rfdetr import x`` inside the package runs the top-level ``__init__`` (the user API's lazy re-exports)
    from below: the version lives in :mod:`rfdetr.version` for that reason."""
    root = [
        f"{_module_name(path)}: from rfdetr import {', '.join(a.name for a in node.names)}"
        for path in PACKAGE.rglob("*.py")
        if path != PACKAGE / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "rfdetr"
        and any(f"rfdetr.{a.name}" not in import_graph() for a in node.names)
    ]
    assert not root, root


def test_media_sits_above_export_and_runtime() -> None:
    """deploy/'s media jobs (predict over files, video, drawing, tracking) use exported files and the runtime; neither
    export nor runtime code imports them."""
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.startswith(("rfdetr.deploy.export", "rfdetr.deploy.runtime"))
        for target in targets
        if target.startswith("rfdetr.deploy.media")
    ]
    assert not upward, upward


def test_version_matches_pyproject() -> None:
    from rfdetr.version import __version__

    text = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in text
