"""Official RF-DETR weight files: names, URLs, checksums, the local cache and a verified downloader.

The table follows the RF-DETR spec section 1.3 (the names rfdetr uses on disk). Files are cached in ``$RF_HOME``
(default ``~/.cache/rfdetr``). Downloads stream into a temporary file next to the destination, are checked against
the published md5, and only then renamed into place, so an interrupted or corrupt download never looks like a
valid cached file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rfdetr.util.atomic import atomic_path

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    """Where an official weight file lives and its published md5."""

    url: str
    md5: str


_GCS = "https://storage.googleapis.com/rfdetr"

OFFICIAL_WEIGHTS: dict[str, WeightFile] = {
    "rf-detr-nano.pth": WeightFile(f"{_GCS}/nano_coco/checkpoint_best_regular.pth", "fb6504cce7fbdc783f7a46991f07639f"),
    "rf-detr-small.pth": WeightFile(
        f"{_GCS}/small_coco/checkpoint_best_regular.pth", "fb37061c1af7bace359c91b723a8d5c1"
    ),
    "rf-detr-medium.pth": WeightFile(
        f"{_GCS}/medium_coco/checkpoint_best_regular.pth", "7223f764a87b863f02eb8d52bf0ce2ee"
    ),
    "rf-detr-large-2026.pth": WeightFile(f"{_GCS}/rf-detr-large-2026.pth", "5cb72153541cbcb9aa6efa26222acc75"),
    "rf-detr-base.pth": WeightFile(f"{_GCS}/rf-detr-base-coco.pth", "b4d3ce46099eaed50626ede388caf979"),
    "rf-detr-base-2.pth": WeightFile(f"{_GCS}/rf-detr-base-2.pth", "462f4d9df407ddc1812f42614040e913"),
    "rf-detr-base-o365.pth": WeightFile(
        f"{_GCS}/top-secret-1234/lwdetr_dinov2_small_o365_checkpoint.pth", "d93f4921ccbb0f0a2e4364bed290892b"
    ),
    "rf-detr-large.pth": WeightFile(f"{_GCS}/rf-detr-large.pth", "992c8e862aa733a7bb2777e45d49f1a0"),
    "rf-detr-seg-preview.pt": WeightFile(f"{_GCS}/rf-detr-seg-preview.pt", "e35820c28fb86080558123e47a5e49ca"),
    "rf-detr-seg-nano.pt": WeightFile(f"{_GCS}/rf-detr-seg-n-ft.pth", "9995497791d0ff1664a1d9ddee9cfd20"),
    "rf-detr-seg-small.pt": WeightFile(f"{_GCS}/rf-detr-seg-s-ft.pth", "0a2a3006381d0c42853907e700eadd08"),
    "rf-detr-seg-medium.pt": WeightFile(f"{_GCS}/rf-detr-seg-m-ft.pth", "a49af1562c3719227ad43d0ca53b4c7a"),
    "rf-detr-seg-large.pt": WeightFile(f"{_GCS}/rf-detr-seg-l-ft.pth", "275f7b094909544ed2841c94a677d07e"),
    "rf-detr-seg-xlarge.pt": WeightFile(f"{_GCS}/rf-detr-seg-xl-ft.pth", "3693b35d0eea86ebb3e0444f4a611fba"),
    "rf-detr-seg-xxlarge.pt": WeightFile(f"{_GCS}/rf-detr-seg-2xl-ft.pth", "040bc3412af840fa8a47e0ff69b552ba"),
    # rfdetr-plus models (PML-1.0 licence); listed so their files can be fetched and identified.
    "rf-detr-xlarge.pth": WeightFile(
        f"{_GCS}/platform-licensed/rf-detr-xlarge.pth", "6ddf834f2bc5bed3214a82f9b0aaeed7"
    ),
    "rf-detr-xxlarge.pth": WeightFile(
        f"{_GCS}/platform-licensed/rf-detr-xxlarge.pth", "e3204689c1f0280427e4c33e6a2ac6cd"
    ),
}

# The COCO weights each preset of :data:`rfdetr.config.MODEL_PRESETS` starts from by default.
PRESET_WEIGHTS: dict[str, str] = {
    "nano": "rf-detr-nano.pth",
    "small": "rf-detr-small.pth",
    "medium": "rf-detr-medium.pth",
    "large": "rf-detr-large-2026.pth",
    "base": "rf-detr-base.pth",
    "seg-preview": "rf-detr-seg-preview.pt",
    "seg-nano": "rf-detr-seg-nano.pt",
    "seg-small": "rf-detr-seg-small.pt",
    "seg-medium": "rf-detr-seg-medium.pt",
    "seg-large": "rf-detr-seg-large.pt",
    "seg-xlarge": "rf-detr-seg-xlarge.pt",
    "seg-2xlarge": "rf-detr-seg-xxlarge.pt",
}


class WeightsDownloadError(RuntimeError):
    """A weight file could not be downloaded or failed its checksum."""


def cache_dir() -> Path:
    """The weight cache: ``$RF_HOME`` if set, else ``~/.cache/rfdetr`` (read on every call, never created here)."""
    env = os.environ.get("RF_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rfdetr"


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"Download it by hand from {url} and save it as {dest} "
        f"(the cache folder is $RF_HOME, default ~/.cache/rfdetr), or pass the path of a local copy."
    )


def download(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the md5 when given.

    The body is streamed into a temporary file in ``dest``'s folder, fsync-ed, verified, then renamed to ``dest``
    with ``os.replace``; on any failure the temporary file is removed and ``dest`` is left untouched.

    Args:
        url: http(s) or file URL.
        dest: final file path; its folder is created.
        md5: expected hex digest (case-insensitive), or ``None`` to skip the check.
        progress: show a tqdm progress bar.
        timeout: socket timeout in seconds.

    Returns:
        ``dest`` as a Path.

    Raises:
        WeightsDownloadError: network / HTTP failure (the message names the URL and where to put the file by hand),
            or md5 mismatch.
    """
    dest = Path(dest)
    digest = hashlib.md5()
    with atomic_path(dest, durable=True) as tmp:
        with open(tmp, "xb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                        for chunk in iter(lambda: response.read(_CHUNK), b""):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as err:
                raise WeightsDownloadError(
                    f"downloading {url} failed: HTTP {err.code} {err.reason}. {_manual_hint(url, dest)}"
                ) from None  # the message says it all; urllib's chained internals are noise to a user
            except (urllib.error.URLError, OSError) as err:  # refused, DNS, timeout, reset ...
                reason = getattr(err, "reason", err)
                raise WeightsDownloadError(
                    f"downloading {url} failed: {reason}. {_manual_hint(url, dest)}"
                ) from None
        got = digest.hexdigest()
        if md5 is not None and got.lower() != md5.lower():
            raise WeightsDownloadError(
                f"md5 mismatch for {url}: expected {md5.lower()}, got {got} (the download was deleted). "
                f"{_manual_hint(url, dest)}"
            )
    logger.info("downloaded %s to %s", url, dest)
    return dest


def resolve_weights(
    name_or_path: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """The local file for a weight name or path, downloading official weights when needed.

    * an existing file is returned as is, and so is a Hugging Face transformers folder (config.json +
      model.safetensors; :mod:`rfdetr.checkpoint.huggingface`);
    * a known bare name (``rf-detr-nano.pth``, ``rf-detr-seg-small.pt`` ...) is looked up in the cache and downloaded
      there if absent;
    * a path whose file name is a known name but which does not exist yet is downloaded to that path.

    Args:
        name_or_path: a path or a key of :data:`OFFICIAL_WEIGHTS`.
        cache: cache folder; default :func:`cache_dir`.
        progress: show a progress bar while downloading.

    Raises:
        FileNotFoundError: not an existing file and not a known weight name.
        WeightsDownloadError: the download failed.
    """
    from rfdetr.checkpoint.files import is_transformers_checkpoint

    path = Path(name_or_path).expanduser()
    if path.is_file() or is_transformers_checkpoint(path):
        return path
    known = OFFICIAL_WEIGHTS.get(path.name)
    if known is None or path.is_dir():
        raise FileNotFoundError(
            f"weights {os.fspath(name_or_path)!r} not found: not an existing file and not an official weight name "
            f"({', '.join(OFFICIAL_WEIGHTS)})"
        )
    is_bare_name = str(name_or_path) == path.name
    dest = Path(cache or cache_dir()).expanduser() / path.name if is_bare_name else path
    if dest.is_file():
        return dest
    logger.info("%s not in %s; downloading it from %s", path.name, dest.parent, known.url)
    return download(known.url, dest, known.md5, progress=progress)
