"""Old module paths keep importing the moved modules (with a warning naming the new one), and imports run one way."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from rfdetr.util.moved import MOVED_MODULES

PACKAGE = Path(__file__).resolve().parents[2] / "rfdetr"


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_path_gives_the_new_module_with_a_warning(old: str) -> None:
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
    from rfdetr.deploy.runner import OnnxModel as new

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
    ("rfdetr.config", "rfdetr.util"),
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
