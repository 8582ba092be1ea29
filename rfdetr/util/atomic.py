"""Atomic writes: a file is whole or absent, never half-written, and is created with the user's usual file mode.

Every writer in the package goes through :func:`atomic_path`: it names a fresh temporary file beside the target (same
folder, so ``os.replace`` onto the target is atomic; same suffix, so libraries that choose a container or a weights
file by the suffix, such as OpenCV and OpenVINO, write the right thing), lets the caller (or a library) write it, and
moves it into place only when the block ends without an error. On an error the temporary files are removed and the
target is left as it was.

The temporary file is created by whoever writes it (``open(..., "xb")``, ``onnx.save`` ...), never by
``tempfile.mkstemp``, whose files are 0600: results then follow the umask like any other program's, so a colleague on
a shared server can read them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["atomic_path", "temp_path_for", "write_bytes_atomic"]


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name beside ``path`` that keeps its suffix: ``dir/.model.1234-9f3a1b2c.tmp.onnx``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, companions: Sequence[str] = (), durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary path to write instead of ``path``; on success it is renamed onto ``path``.

    Args:
        path: the target file; its folder is created.
        companions: suffixes of files written together with the temporary one and named after it (OpenVINO writes
            ``x.bin`` beside ``x.xml``: ``companions=(".bin",)``). They are moved first, so that the main file is never
            visible without the companions it was written with.
        durable: fsync the file and its folder, so that the rename survives a power loss (checkpoints, downloads).

    Yields:
        The temporary path (not created: the caller writes it, e.g. ``open(tmp, "xb")``).

    Raises:
        FileNotFoundError: the block ended without writing the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    moves = [(tmp.with_suffix(s), path.with_suffix(s)) for s in companions] + [(tmp, path)]
    moved: list[Path] = []
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        for source, target in moves:
            if durable:
                _fsync_file(source)
            os.replace(source, target)
            moved.append(target)
    except BaseException:
        for source, _ in moves:
            source.unlink(missing_ok=True)
        for target in moved:  # a new companion without the main file it belongs to would only mislead
            target.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`: ``path`` is whole or absent."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return Path(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows), where it is skipped.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
