"""Named points where tests kill the process for real (SIGKILL), to prove crash recovery.

``MONOREC_KILL_AT="name:n"`` kills the process the n-th time :func:`failpoint` is reached with ``name``.
Unset (always, outside tests) it costs one dictionary lookup. ``MONOREC_KILL_ONCE=FILE`` kills only the
first process to get there (it creates FILE): a worker that a pool restarts then carries on.
"""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    target = os.environ.get("MONOREC_KILL_AT")
    if not target:
        return
    where, _, count = target.partition(":")
    if where != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] < int(count or 1):
        return
    once = os.environ.get("MONOREC_KILL_ONCE")
    if once:
        try:
            with open(once, "x"):
                pass
        except FileExistsError:
            return  # another process died here already
    os.kill(os.getpid(), signal.SIGKILL)
