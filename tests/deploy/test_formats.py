"""The export-format registry: its pins are the ones the project installs, and its messages give them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfdetr.deploy.formats import FORMATS, MissingPackageError, get_format, load_format

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
def test_format_module_hint_is_the_registry_command(name: str) -> None:
    fmt = get_format(name)
    module = load_format(fmt)  # imports no converter: they are imported only when used
    assert module.INSTALL_HINT == fmt.install
    assert all(pin in module.INSTALL_HINT for pin in fmt.pip)


def test_missing_package_message_names_the_package_and_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = get_format("openvino")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"exporting to openvino .* needs openvino, .*pip install "
                                                  r"openvino==2026\.4\.1 nncf==3\.4\.0"):
        fmt.require()
