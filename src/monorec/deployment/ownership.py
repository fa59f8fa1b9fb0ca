"""Who owns a deployment folder: one process at a time holds its lock file, and a server that owns it says
where it listens, so that other processes (the CLI) ask it instead of opening the folder.

    .owner.lock     flock()ed for the owner's whole life (the kernel releases it when the process dies)
    server.json     {"url", "pid"} while a server owns the folder (stale when nobody holds the lock)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from monorec.artifacts import read_json, write_json
from monorec.errors import ArtifactError, DeployError

__all__ = ["FolderLock", "running_server"]

LOCK_FILE = ".owner.lock"
SERVER_FILE = "server.json"


class FolderLock:
    """The exclusive ownership of ``root`` (created if missing).

    Raises:
        DeployError: another running process owns the folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._file = open(root / LOCK_FILE, "w")  # noqa: SIM115  (held for the object's life)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise DeployError(f"{root} is owned by another running process; use its API") from None

    @property
    def held(self) -> bool:
        return not self._file.closed

    def announce(self, url: str) -> None:
        """Records that the owner serves the folder at ``url`` (withdrawn by :meth:`release`)."""
        write_json(self.root / SERVER_FILE, {"url": url, "pid": os.getpid()})

    def release(self) -> None:
        """Withdraws the announcement and releases the folder (again: a no-op)."""
        if not self.held:
            return
        (self.root / SERVER_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def running_server(root: str | Path) -> str | None:
    """The URL of the server that owns ``root`` now, or None (no owner, or an owner that is not a server).
    Reads only: creates nothing."""
    root = Path(root)
    lock, announced = root / LOCK_FILE, root / SERVER_FILE
    if not lock.exists() or not announced.exists():
        return None
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live owner: its announcement is current
            with contextlib.suppress(ArtifactError, KeyError, TypeError):
                return str(read_json(announced)["url"])
            return None
        fcntl.flock(fh, fcntl.LOCK_UN)  # nobody holds it: the announcement is stale
    return None
