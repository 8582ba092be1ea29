"""Old module paths that users may hold (``rfdetr.onnx_model``, ``rfdetr.engine`` ...) keep working.

The package was regrouped by job (training under ``rfdetr.train``, deployment under ``rfdetr.deploy``, checkpoints
under ``rfdetr.checkpoint``). Importing an old path gives the module at its new place, with a ``DeprecationWarning``
that names it. The finder claims only the names below, and it is consulted first: an old path inside a moved package
(``rfdetr.deploy.formats.onnx``) would otherwise be found again through the new package's folder and run a second
copy of the module.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old path -> new path
MOVED_MODULES: dict[str, str] = {
    "rfdetr.cli": "rfdetr.train.args",
    "rfdetr.deploy.calibration": "rfdetr.deploy.export.calibration",
    "rfdetr.deploy.detections": "rfdetr.deploy.runtime.detections",
    "rfdetr.deploy.evaluate": "rfdetr.deploy.runtime.evaluate",
    "rfdetr.deploy.exporter": "rfdetr.deploy.export.exporter",
    "rfdetr.deploy.formats": "rfdetr.deploy.export.formats",
    "rfdetr.deploy.formats.executorch": "rfdetr.deploy.export.formats.executorch",
    "rfdetr.deploy.formats.onnx": "rfdetr.deploy.export.formats.onnx",
    "rfdetr.deploy.formats.openvino": "rfdetr.deploy.export.formats.openvino",
    "rfdetr.deploy.formats.tflite": "rfdetr.deploy.export.formats.tflite",
    "rfdetr.deploy.formats.tflite_int8": "rfdetr.deploy.export.formats.tflite_int8",
    "rfdetr.deploy.graph": "rfdetr.deploy.export.graph",
    "rfdetr.deploy.metadata": "rfdetr.deploy.export.metadata",
    "rfdetr.deploy.optimize": "rfdetr.deploy.runtime.optimize",
    "rfdetr.deploy.predict": "rfdetr.deploy.media.predict",
    "rfdetr.deploy.processing": "rfdetr.deploy.runtime.processing",
    "rfdetr.deploy.report": "rfdetr.deploy.export.report",
    "rfdetr.deploy.runner": "rfdetr.deploy.runtime.runner",
    "rfdetr.deploy.sensitivity": "rfdetr.deploy.export.sensitivity",
    "rfdetr.deploy.sources": "rfdetr.deploy.media.sources",
    "rfdetr.deploy.timing": "rfdetr.deploy.runtime.timing",
    "rfdetr.deploy.track": "rfdetr.deploy.media.track",
    "rfdetr.deploy.video": "rfdetr.deploy.media.video",
    "rfdetr.deploy.visualize": "rfdetr.deploy.media.visualize",
    "rfdetr.detections": "rfdetr.deploy.runtime.detections",
    "rfdetr.ema": "rfdetr.train.ema",
    "rfdetr.engine": "rfdetr.train.engine",
    "rfdetr.evaluation": "rfdetr.data.coco_eval",
    "rfdetr.feature_cache": "rfdetr.train.feature_cache",
    "rfdetr.inference": "rfdetr.deploy.runtime.processing",
    "rfdetr.onnx_export": "rfdetr.deploy.export.formats.onnx",
    "rfdetr.onnx_model": "rfdetr.deploy.runtime.runner",
    "rfdetr.optim": "rfdetr.train.optim",
    "rfdetr.single_stage": "rfdetr.train.single_stage",
    "rfdetr.stage1": "rfdetr.train.stage1",
    "rfdetr.stage2": "rfdetr.train.stage2",
    "rfdetr.surgery": "rfdetr.checkpoint.surgery",
    "rfdetr.train_config": "rfdetr.train.config",
    "rfdetr.training": "rfdetr.train.fit",
    "rfdetr.visualize": "rfdetr.deploy.media.visualize",
    "rfdetr.weights": "rfdetr.checkpoint.weights",
}


class _MovedModuleFinder:
    """Resolves an old path to the module at its new one (the same module object, not a copy).

    A meta-path finder and its own loader (the protocol, not the ``importlib.abc`` classes, whose import costs more
    than the rest of ``import rfdetr``).
    """

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new)
        # The import machinery sets ``__spec__`` of whatever this returns to the old path's spec; put it back after.
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module ran at its new path); only its own spec is restored."""
        module.__spec__ = self._specs.pop(module.__name__, module.__spec__)


def install() -> None:
    """Add the finder once, before the regular finders (it answers only for :data:`MOVED_MODULES`)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
