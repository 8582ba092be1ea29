"""Official-weight table, cache resolution and the verified downloader, against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rfdetr.checkpoint import weights
from rfdetr.checkpoint.weights import (
    OFFICIAL_WEIGHTS,
    PRESET_WEIGHTS,
    WeightFile,
    WeightsDownloadError,
    cache_dir,
    download,
    resolve_weights,
)
from rfdetr.config import MODEL_PRESETS

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)  # spans several read chunks
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """Serve tmp_path/www on 127.0.0.1 in a thread; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "weights.pth").write_bytes(PAYLOAD)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_table_covers_every_preset() -> None:
    assert set(PRESET_WEIGHTS) == set(MODEL_PRESETS)
    assert all(name in OFFICIAL_WEIGHTS for name in PRESET_WEIGHTS.values())
    for name, entry in OFFICIAL_WEIGHTS.items():
        assert entry.url.startswith("https://storage.googleapis.com/rfdetr/"), name
        assert len(entry.md5) == 32 and int(entry.md5, 16) >= 0, name
    assert OFFICIAL_WEIGHTS["rf-detr-seg-nano.pt"].url.endswith("rf-detr-seg-n-ft.pth")


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RF_HOME", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RF_HOME")
    assert cache_dir() == Path.home() / ".cache" / "rfdetr"


def test_download_success(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "w.pth"
    assert download(f"{server}/weights.pth", dest, PAYLOAD_MD5.upper(), progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["w.pth"]


def test_download_md5_mismatch(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "w.pth"
    with pytest.raises(WeightsDownloadError, match=f"md5 mismatch.*got {PAYLOAD_MD5}"):
        download(f"{server}/weights.pth", dest, "0" * 32, progress=False)
    assert _leftovers(dest.parent) == []


def test_download_404(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "w.pth"
    url = f"{server}/missing.pth"
    with pytest.raises(WeightsDownloadError, match="HTTP 404") as info:
        download(url, dest, progress=False)
    assert url in str(info.value) and str(dest) in str(info.value)
    assert _leftovers(dest.parent) == []


def test_download_connection_refused(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "w.pth"
    url = f"http://127.0.0.1:{_free_port()}/weights.pth"
    with pytest.raises(WeightsDownloadError) as info:
        download(url, dest, progress=False, timeout=5)
    message = str(info.value)
    assert url in message and f"save it as {dest}" in message
    assert _leftovers(dest.parent) == []


def test_resolve_downloads_then_hits_cache(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RF_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "rf-detr-nano.pth", WeightFile(f"{server}/weights.pth", PAYLOAD_MD5))
    path = resolve_weights("rf-detr-nano.pth", progress=False)
    assert path == tmp_path / "cache" / "rf-detr-nano.pth" and path.read_bytes() == PAYLOAD

    # Second call: no network at all (the URL now points to a closed port).
    dead = WeightFile(f"http://127.0.0.1:{_free_port()}/weights.pth", PAYLOAD_MD5)
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "rf-detr-nano.pth", dead)
    assert resolve_weights("rf-detr-nano.pth") == path


def test_resolve_known_name_at_custom_path(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "rf-detr-small.pth", WeightFile(f"{server}/weights.pth", PAYLOAD_MD5))
    target = tmp_path / "elsewhere" / "rf-detr-small.pth"
    assert resolve_weights(target, progress=False) == target and target.read_bytes() == PAYLOAD


def test_resolve_existing_and_unknown(tmp_path: Path) -> None:
    local = tmp_path / "mine.pth"
    local.write_bytes(b"x")
    assert resolve_weights(local) == local
    assert resolve_weights(str(local)) == local
    with pytest.raises(FileNotFoundError, match="rf-detr-nano.pth"):
        resolve_weights(tmp_path / "unknown.pth")
