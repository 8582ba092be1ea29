"""Optional dependencies as data: what a feature needs, how to install it, one guard that says so in one line.

A feature (an export format, ``--track``, ``--wandb`` ...) lists the import names it needs and the pinned pip
requirements that provide them; :meth:`OptionalFeature.require` checks them with ``importlib.util.find_spec`` (nothing
is imported) and raises :class:`MissingPackageError` whose message is the whole story: what needs what, and the pip
command. Feature code then imports its packages where it uses them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MissingPackageError", "OptionalFeature"]


class MissingPackageError(ImportError):
    """A feature's optional packages are not installed; the message gives the pip command."""


@dataclass(frozen=True)
class OptionalFeature:
    """A feature and the optional packages it needs.

    Attributes:
        name: what the user asks for (``onnx``, ``--track``).
        packages: import names of what the feature needs.
        pip: pip requirement strings, pinned to the versions verified with this project's torch.
        extra: this project's optional extra (``pip install -e ".[extra]"``).
        label: what the feature is, for messages.
    """

    name: str
    packages: tuple[str, ...]
    pip: tuple[str, ...]
    extra: str
    label: str

    @property
    def install(self) -> str:
        """The command that installs what the feature needs."""
        return f"pip install {' '.join(self.pip)}  (or: pip install -e \".[{self.extra}]\")"

    def missing(self, names: Sequence[str] | None = None) -> list[str]:
        """Import names of the needed packages (``names``, default :attr:`packages`) that are not installed."""
        return [name for name in (self.packages if names is None else names) if importlib.util.find_spec(name) is None]

    def require(self, names: Sequence[str] | None = None, action: str | None = None) -> None:
        """Raise :class:`MissingPackageError` (with the pip command) if a needed package is missing.

        Args:
            names: the import names needed for this use (default: :attr:`packages`).
            action: what the user was doing, for the message (default: the feature's name).
        """
        missing = self.missing(names)
        if missing:
            raise MissingPackageError(f"{action or self.name} ({self.label}) needs {', '.join(missing)}, which is not "
                                      f"installed: {self.install}")
