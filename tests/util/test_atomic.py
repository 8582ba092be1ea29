"""The one atomic-write helper: whole or absent, companions moved first, temporary files removed on failure, and the
user's umask for the file mode (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rfdetr.checkpoint import save_checkpoint
from rfdetr.util import atomic
from rfdetr.util.atomic import atomic_path, write_bytes_atomic
from rfdetr.util.run_dir import write_json_atomic


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    """Pictures, JSON and checkpoints a colleague on a shared server can read (0644 under umask 022)."""
    written = [
        write_json_atomic(tmp_path / "results.json", {"a": 1}),
        write_bytes_atomic(tmp_path / "picture.jpg", b"\xff\xd8"),
        save_checkpoint({"model": {"w": torch.zeros(2)}}, tmp_path / "checkpoint.pth"),
    ]
    with atomic_path(tmp_path / "model.xml", companions=(".bin",)) as tmp:
        tmp.write_text("<net/>")
        tmp.with_suffix(".bin").write_bytes(b"\0")
    written += [tmp_path / "model.xml", tmp_path / "model.bin"]
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(0o644) for p in written}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporary file left


def test_temporary_name_keeps_the_suffix_and_is_hidden(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "sub" / "clip.mp4") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.name.startswith(".clip.") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"x")
    assert (tmp_path / "sub" / "clip.mp4").read_bytes() == b"x"


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("new, half written")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_nothing_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(tmp_path / "a.bin"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_failed_main_move_removes_the_moved_companion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .bin is moved first; when moving the .xml then fails, the new .bin (which belongs to no .xml) goes too."""
    real_replace = os.replace

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if str(target).endswith(".xml"):
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"), atomic_path(tmp_path / "m.xml", companions=(".bin",)) as tmp:
        tmp.write_text("<net/>")
        tmp.with_suffix(".bin").write_bytes(b"\0")
    assert list(tmp_path.iterdir()) == []
