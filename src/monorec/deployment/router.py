"""The router that pins each request to one deployed version.

:class:`VersionRouter` holds the serving version (and the version on trial); ``pin()`` resolves it ONCE at
the start of a request and counts the request in flight until it ends, so a switch never changes a
request's version half-way and the old version can be drained before it is freed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from monorec.deployment.trials import Trial
from monorec.deployment.version import ServingVersion
from monorec.errors import DeployError

__all__ = ["VersionRouter"]


class VersionRouter:
    """Holds the serving version and the version on trial (canary or shadow, see :mod:`monorec.deployment.trials`);
    requests pin one version for their whole life."""

    def __init__(self) -> None:
        self._current: ServingVersion | None = None
        self._trial: tuple[ServingVersion, Trial] | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> ServingVersion | None:
        return self._current

    @property
    def trial(self) -> Trial | None:
        held = self._trial
        return None if held is None else held[1]

    @property
    def trial_version(self) -> ServingVersion | None:
        """The version on trial, while one is."""
        held = self._trial
        return None if held is None else held[0]

    def set_trial(self, version: ServingVersion, trial: Trial) -> None:
        with self._lock:
            self._trial = (version, trial)

    def clear_trial(self) -> None:
        with self._lock:
            self._trial = None

    @contextmanager
    def pin(self, candidate: bool = False) -> Iterator[ServingVersion]:
        """The serving version (or with ``candidate`` the version on trial, while one is: else the serving
        one), resolved once; it stays usable (not freed) until the block ends."""
        with self._lock:  # read and count in one step, so a drain can never miss this request
            version = self._trial[0] if candidate and self._trial is not None else self._current
            if version is None:
                raise DeployError("no version is serving yet; deploy one first")
            version.enter()
        try:
            yield version
        finally:
            version.leave()

    def switch(self, version: ServingVersion) -> ServingVersion | None:
        """Atomically makes ``version`` serve new requests; returns the previous one (still draining)."""
        with self._lock:
            previous, self._current = self._current, version
        return previous

    @staticmethod
    def drain(version: ServingVersion, timeout_s: float) -> bool:
        """Waits until no request is pinned to ``version``; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while version.in_flight > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True
