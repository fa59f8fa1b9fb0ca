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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monorec._failpoints import failpoint
from monorec.errors import ArtifactError

__all__ = [
    "GrowingStringPack",
    "atomic_dir",
    "atomic_write",
    "file_sha256",
    "link_snapshot",
    "pack_strings",
    "read_json",
    "recover_dirs",
    "staging_dir",
    "unpack_strings",
    "verify_manifest",
    "write_json",
]

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


def staging_dir(path: str | Path) -> Path:
    """A new, empty temporary directory beside ``path`` (``.NAME.*.tmp``, which :func:`recover_dirs`
    removes after a crash), for :func:`atomic_dir` to turn into ``path`` later."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, *, manifest: dict[str, Any] | None = None, overwrite: bool = True, staged: Path | None = None
) -> Iterator[Path]:
    """Yields a temporary directory that becomes ``path`` only when the block succeeds.

    A ``manifest.json`` (``manifest`` plus the sha256 of every file) is written last, so a directory
    with a manifest is complete. With ``overwrite=False`` an existing ``path`` is an error. ``staged``: a
    directory from :func:`staging_dir` that already holds some of the files (e.g. written before the
    block, on another thread); it is removed if the block fails.

    Replacing an existing ``path`` takes two renames (the old one aside to ``.NAME.old``, the new one in);
    a crash between them leaves no ``path`` but a complete ``.NAME.old``, which :func:`recover_dirs`
    puts back (the owner of the folder calls it at open).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise ArtifactError(f"{path}: already exists and is immutable")
    tmp = staged if staged is not None else staging_dir(path)
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
            failpoint("checkpoint_swap")  # the crash window recover_dirs() repairs
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


def link_snapshot(path: str | Path, dest: str | Path, attempts: int = 5, *, verify: bool = True) -> dict[str, Any]:
    """A consistent copy of a directory written by :func:`atomic_dir` that its owner may replace at any
    moment (a live checkpoint), made of hard links: instant and without copying data. :func:`atomic_dir`
    never modifies a published file, it swaps whole directories, so linked files keep their content; a
    snapshot torn by a swap (files from two checkpoints) is taken again. Returns the snapshot's manifest.

    Args:
        verify: check every file's checksum (a torn snapshot fails it). ``False`` for a caller that
            verifies the snapshot itself when it loads it (hashing a 1M-entity checkpoint twice costs
            seconds): a swap during the linking is then seen from the directory's identity instead.

    Raises:
        ArtifactError: no complete snapshot in ``attempts`` tries (``path`` missing or always changing).
    """
    path, dest = Path(path), Path(dest)
    error: Exception | None = None
    for _ in range(attempts):
        shutil.rmtree(dest, ignore_errors=True)
        try:
            before = _identity(path)
            for source in sorted(path.rglob("*")):
                if source.is_file():
                    target = dest / source.relative_to(path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(source, target)
            if verify:
                return verify_manifest(dest)
            if _identity(path) != before:
                raise ArtifactError(f"{path} was replaced while it was linked")
            return dict(read_json(dest / MANIFEST))
        except (OSError, ArtifactError) as exc:  # swapped under us: try again
            error = exc
            time.sleep(0.05)
    raise ArtifactError(f"{path}: no consistent snapshot in {attempts} attempts ({error})")


def _identity(path: Path) -> tuple[int, int, int]:
    """A directory's inode, device and change time: a directory swapped in by :func:`atomic_dir` differs
    (a rename changes the moved directory's ctime, so even a reused inode number is told apart)."""
    st = os.stat(path)
    return st.st_ino, st.st_dev, st.st_ctime_ns


def recover_dirs(parent: str | Path) -> list[str]:
    """Repairs what a crash inside :func:`atomic_dir` left in ``parent``; returns what it did.

    A folder moved aside (``.NAME.old``) whose replacement never arrived becomes ``NAME`` again when it is
    complete (its manifest verifies); leftover temporary folders (``.NAME.*.tmp``) and old folders whose
    replacement did arrive are removed. Only the single owner of ``parent`` may call it (nothing else may
    be writing there).
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    done: list[str] = []
    for old in sorted(parent.glob(".*.old")):
        target = parent / old.name[1 : -len(".old")]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name} ({target.name} exists)")
            continue
        try:
            verify_manifest(old)
        except ArtifactError as exc:
            done.append(f"left {old.name}: {exc}")
            continue
        os.replace(old, target)
        done.append(f"restored {target.name} from {old.name}")
    for tmp in sorted(parent.glob(".*.tmp")):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        done.append(f"removed {tmp.name}")
    return done


def pack_strings(strings: Sequence[str]) -> np.ndarray:
    """Strings -> one uint8 array (their JSON list as UTF-8) for an ``.npz`` file, losslessly.

    numpy's fixed-width string arrays drop trailing NUL characters (``"zz\\x00"`` comes back as ``"zz"``),
    which would rename an entity on restart; JSON escapes every character and loads without pickling."""
    return np.frombuffer(f"[{_json_items(strings)}]".encode(), dtype=np.uint8)


_PACK_SLICE = 2048  # strings per json.dumps call (~0.15 ms of the GIL each)


def _json_items(strings: Sequence[str]) -> str:
    """The items of ``strings``' JSON list, as one ``json.dumps`` writes them, without the brackets.

    Encoded a slice at a time: the C encoder holds the GIL for a whole call (~7 ms for 100k ids), and a
    loader's checkpoint runs in a serving process, beside its request threads."""
    return ", ".join(
        json.dumps(list(strings[start : start + _PACK_SLICE]), ensure_ascii=False)[1:-1]
        for start in range(0, len(strings), _PACK_SLICE)
    )


class GrowingStringPack:
    """:func:`pack_strings` of a list that only ever grows at its end (the rows of an append-only store,
    the keys of a dict that never loses one), encoding only the strings appended since the last call.

    Why: every checkpoint of a version packed each of its rows' ids, types and categories and its revision
    book's ids again (400k strings at 100k entities, ~50 ms of Python), while request threads of the same
    process waited for the GIL at each of their calls into ONNX Runtime, faiss or tantivy; the requests
    that met a checkpoint took ~50 ms instead of ~3. The cost: the encoded list is kept (~1.2 MB per 100k
    ids) for the next checkpoint.
    """

    def __init__(self) -> None:
        self.count = 0  # strings packed so far
        self._items = ""

    def extend(self, strings: Sequence[str]) -> None:
        """Appends the strings that follow the ``count`` already packed."""
        if len(strings):
            items = _json_items(strings)
            self._items = f"{self._items}, {items}" if self.count else items
            self.count += len(strings)

    def packed(self) -> np.ndarray:
        """What :func:`pack_strings` returns for all the strings appended so far."""
        return np.frombuffer(f"[{self._items}]".encode(), dtype=np.uint8)


def unpack_strings(packed: np.ndarray) -> list[str]:
    """The inverse of :func:`pack_strings`.

    Raises:
        ArtifactError: the array does not hold a JSON list of strings.
    """
    try:
        strings = json.loads(packed.astype(np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"a packed string array does not decode: {exc}") from None
    if not isinstance(strings, list) or not all(isinstance(x, str) for x in strings):
        raise ArtifactError("a packed string array does not hold a list of strings")
    return strings
