"""Canary and shadow trials of a candidate version beside the serving one (DESIGN section 6).

A :class:`Trial` names a ready (validated, loaded, fed by its loader) version and how it takes traffic:

- ``canary``: a ``share`` of requests is answered by the candidate, sticky per value of ``sticky_by``
  (a user always lands on the same side: a hash of the value, not a coin per request); requests without
  that field are assigned by a hash of their whole context. Each request is still pinned to ONE version.
- ``shadow``: every request is answered by the serving version; the candidate scores the same request off
  the request path and the two answers are compared (overlap@k, rank correlation, latency, errors).

:class:`TrialController` starts, promotes (switches to the candidate) and aborts trials of a
:class:`~monorec.deploy.Deployment`; the trial is kept in the control plane, so a restarted owner resumes
it. The serving engine measures both sides and aborts a trial whose candidate breaches the environment's
thresholds (see :mod:`monorec.serving.trial_stats`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from monorec.errors import DeployError

if TYPE_CHECKING:
    from monorec.deploy import Deployment

__all__ = ["Trial", "TrialController"]

log = logging.getLogger(__name__)

TrialMode = Literal["canary", "shadow"]


@dataclass(frozen=True)
class Trial:
    version: str
    mode: TrialMode
    share: float = 0.0  # canary: the share of requests (of sticky keys) the candidate answers
    sticky_by: str = "user_id"
    started: float = 0.0

    def takes(self, context: Mapping[str, Any]) -> bool:
        """Whether the candidate answers a request with this context (canary only; deterministic)."""
        if self.mode != "canary" or self.share <= 0:
            return False
        value = context.get(self.sticky_by)
        key = str(value) if value not in (None, "") else json.dumps(context, sort_keys=True, default=str)
        digest = hashlib.blake2b(f"{self.version}\x1f{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.share

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Trial:
        return cls(**json.loads(text))


class TrialController:
    """Starts, promotes and aborts the deployment's trial (one at a time)."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.last_abort: str | None = None

    @property
    def trial(self) -> Trial | None:
        return self.deployment.router.trial

    def start(self, version: str, mode: TrialMode = "canary", share: float = 0.05, sticky_by: str = "user_id") -> Trial:
        """Puts a ready or standby version on trial beside the serving one.

        Raises:
            DeployError: the version is serving, not ready, or a trial runs already; ``share`` not in (0, 1].
        """
        dep = self.deployment
        if mode == "canary" and not 0 < share <= 1:
            raise DeployError(f"a canary share is in (0, 1], got {share}")
        if mode not in ("canary", "shadow"):
            raise DeployError(f"a trial is a 'canary' or a 'shadow', got {mode!r}")
        with dep.lifecycle():
            current = self.trial
            if current is not None:
                raise DeployError(f"{current.version} is already on {current.mode} trial; promote or abort it first")
            if dep.control.pointer("serving") == version:
                raise DeployError(f"{version} is serving: a trial puts another version beside it")
            sv = dep.load_ready(version)
            trial = Trial(version, mode, share if mode == "canary" else 0.0, sticky_by, time.time())
            dep.control.set_setting("trial", trial.to_json())
            dep.router.set_trial(sv, trial)
            self.last_abort = None
            log.info("trial started: %s", trial)
            return trial

    def resume(self) -> Trial | None:
        """The trial the control plane records, back on after a restart (dropped when its version cannot
        serve any more)."""
        dep = self.deployment
        saved = dep.control.setting("trial")
        if saved is None:
            return None
        trial = Trial.from_json(saved)
        try:
            with dep.lifecycle():
                dep.router.set_trial(dep.load_ready(trial.version), trial)
        except DeployError as exc:
            log.warning("trial of %s not resumed: %s", trial.version, exc)
            dep.control.set_setting("trial", None)
            return None
        return trial

    def _running(self) -> Trial:
        trial = self.trial
        if trial is None:
            raise DeployError("no trial runs")
        return trial

    def end(self) -> None:
        """Forgets the trial (router and control plane); the caller holds the lifecycle lock."""
        self.deployment.router.clear_trial()
        self.deployment.control.set_setting("trial", None)

    def abort(self, reason: str = "aborted by an operator") -> Trial:
        """Ends the trial: every request goes to the serving version again; the candidate stays ready.

        Raises:
            DeployError: no trial runs.
        """
        with self.deployment.lifecycle():
            trial = self._running()
            self.end()
            self.last_abort = f"{trial.version}: {reason}"
            log.warning("trial of %s aborted: %s", trial.version, reason)
            return trial

    def promote(self) -> str:
        """Switches to the candidate (the serving version goes to standby); the switch ends the trial.

        Raises:
            DeployError: no trial runs.
        """
        with self.deployment.lifecycle():
            trial = self._running()
            self.deployment.switch(trial.version)
            return trial.version
