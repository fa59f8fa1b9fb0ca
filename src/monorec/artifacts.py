"""Writing artifacts so that nothing half-written ever looks complete.

Files are written to a temporary sibling and renamed into place (atomic on POSIX); directories are built
under a temporary name and renamed last, and hold a ``manifest.json`` listing every file with its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monorec.errors import ArtifactError

__all__ = ["atomic_dir", "atomic_write", "file_sha256", "read_json", "verify_manifest", "write_json"]

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path; on success it is renamed to ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_write(path) as tmp:
        # keys keep their insertion order: a config's canvas order is the task_type index
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, manifest: dict[str, Any] | None = None, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary directory that becomes ``path`` only when the block succeeds.

    A ``manifest.json`` (``manifest`` plus the sha256 of every file) is written last, so a directory
    with a manifest is complete. With ``overwrite=False`` an existing ``path`` is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path}: already exists and is immutable")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        files = {
            str(p.relative_to(tmp)): file_sha256(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        write_json(tmp / MANIFEST, {**(manifest or {}), "files": files})
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700 directories
        if path.exists():
            if not overwrite:
                raise ArtifactError(f"{path}: appeared while writing; refusing to overwrite")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_manifest(path: str | Path) -> dict[str, Any]:
    """Checks that a directory written by :func:`atomic_dir` is complete and unmodified.

    Raises:
        ArtifactError: no manifest, or a listed file is missing or has another checksum.
    """
    path = Path(path)
    manifest = read_json(path / MANIFEST)
    for name, digest in manifest.get("files", {}).items():
        target = path / name
        if not target.is_file():
            raise ArtifactError(f"{path}: {name} listed in the manifest is missing")
        if file_sha256(target) != digest:
            raise ArtifactError(f"{path}: {name} does not match its checksum (corrupt or modified)")
    return dict(manifest)
