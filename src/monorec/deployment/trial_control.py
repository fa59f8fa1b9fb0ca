"""Starting, promoting and aborting the trial of a :class:`~monorec.deployment.trials.Trial` on a
deployment: the trial is kept in the control plane, so a restarted owner resumes it (:meth:`resume`).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import Protocol

from monorec.deployment.control_plane import ControlPlane
from monorec.deployment.router import VersionRouter
from monorec.deployment.trials import Trial, TrialMode
from monorec.deployment.version import ServingVersion
from monorec.errors import DeployError

__all__ = ["TrialController", "TrialHost"]

log = logging.getLogger(__name__)


class TrialHost(Protocol):
    """What a trial needs from its deployment (:class:`~monorec.deployment.Deployment` is one)."""

    router: VersionRouter
    control: ControlPlane

    def lifecycle(self) -> AbstractContextManager[None]: ...

    def load_ready(self, version: str) -> ServingVersion: ...

    def switch(self, version: str) -> None: ...


class TrialController:
    """Starts, promotes and aborts the deployment's trial (one at a time)."""

    def __init__(self, deployment: TrialHost) -> None:
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
