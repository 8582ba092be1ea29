"""The export-format registry: its pins are the ones the project installs, and its messages give them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rfdetr.deploy.export.formats import FORMATS, MissingPackageError, get_format, int8_formats, load_format
from rfdetr.deploy.export.int8 import INT8_IO
from rfdetr.deploy.media.track import TRACKING

REPO = Path(__file__).resolve().parents[2]


def _requirements() -> set[str]:
    lines = (REPO / "requirements-deploy.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


@pytest.mark.parametrize("name", list(FORMATS))
def test_registry_pins_are_the_extras_and_the_requirements(name: str) -> None:
    # The package supports Python 3.10, whose standard library has no TOML reader; CI runs 3.11.
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")
    fmt = get_format(name)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # The registry names what `pip install` a message prints; pyproject's extra and requirements-deploy.txt (what
    # `make test` installs) must pin exactly the same versions, or a user is told to install what CI never ran.
    assert sorted(extras[fmt.extra]) == sorted(fmt.pip), f"pyproject [{fmt.extra}] differs from the registry"
    assert set(fmt.pip) <= _requirements(), f"requirements-deploy.txt lacks {set(fmt.pip) - _requirements()}"


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_modules_use_their_registry_entry(name: str) -> None:
    fmt = get_format(name)
    module = load_format(fmt)  # imports no converter: they are imported only when used
    assert module.FORMAT is fmt  # the one place for the pins, the messages and the import guard


@pytest.mark.parametrize("name", int8_formats())
def test_int8_entry_points_are_what_the_registry_says(name: str) -> None:
    int8 = get_format(name).int8
    assert int8 is not None
    quantizer = int8.load()
    assert quantizer.__name__ == {"file": "quantize", "graph": "quantize_module"}[int8.source]
    assert set(int8.io) <= set(INT8_IO)


def test_capabilities_are_data_no_format_module_is_imported() -> None:
    """What each format offers is read from the registry: listing it imports no format module (nor converter)."""
    code = (
        "import sys\n"
        "from rfdetr.deploy.export.formats import FORMATS, half_formats, int8_formats, integer_io_formats\n"
        "print(int8_formats(), integer_io_formats(), half_formats())\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('rfdetr.deploy.export.formats.') or m in "
        "('onnx', 'onnxruntime', 'openvino', 'litert_torch', 'executorch', 'nncf', 'ai_edge_litert'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['onnx', 'tflite', 'openvino'] ['tflite'] ['tflite', 'openvino']"


def test_tracking_pins_are_the_extra_and_the_requirements() -> None:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(extras[TRACKING.extra]) == sorted(TRACKING.pip)
    assert set(TRACKING.pip) <= _requirements()


def test_missing_package_message_names_the_package_and_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = get_format("openvino")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"exporting to openvino .* needs openvino, .*pip install "
                                                  r"openvino==2026\.4\.1 nncf==3\.4\.0"):
        fmt.require()


def test_half_is_refused_from_the_registry() -> None:
    with pytest.raises(ValueError, match=r"--half is not offered for onnx: onnxruntime runs float32 .*formats with "
                                         r"float16 weights: tflite, openvino"):
        get_format("onnx").check_half(True)
    get_format("openvino").check_half(True)
