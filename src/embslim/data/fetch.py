"""Download official dataset archives with checksum verification.

Checksums are the ones the publishers give (GroupLens publishes MD5 sums). A
download whose checksum does not match is deleted and reported; nothing is
extracted from it. Any URL urllib opens works, file:// included (for mirrors
and tests).
"""
from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from embslim.errors import DataError


@dataclass(frozen=True)
class Archive:
    url: str
    checksum: str | None
    folder: str


def digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str) -> None:
    """Raise DataError (and delete the file) unless `path` matches "algo:hexdigest"."""
    algorithm, _, expected = checksum.partition(":")
    actual = digest(path, algorithm)
    if actual != expected.lower():
        path.unlink(missing_ok=True)
        raise DataError(f"{path.name}: {algorithm} checksum mismatch (expected {expected}, got {actual}); the download was deleted")


def download(url: str, target: Path, progress: bool = True) -> Path:
    """Stream `url` to `target` via a temporary file, with a byte progress bar."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    partial.replace(target)
    return target


def fetch_archive(archive: Archive, dest: Path, allow_unverified: bool = False, progress: bool = True) -> Path:
    """Download, verify and extract `archive` into `dest`; returns the extracted folder."""
    if archive.checksum is None and not allow_unverified:
        raise DataError(f"{archive.url}: the publisher gives no fixed checksum; pass --checksum ALGO:HEX or --allow-unverified")
    folder = dest / archive.folder
    if folder.exists():
        return folder
    file = download(archive.url, dest / Path(archive.url).name, progress)
    if archive.checksum:
        verify(file, archive.checksum)
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(file) as tf:
                tf.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise DataError(f"{file}: not a readable zip or tar archive ({exc})") from None
    if not folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        raise DataError(f"{file}: archive did not contain the expected folder {archive.folder!r}")
    return folder
