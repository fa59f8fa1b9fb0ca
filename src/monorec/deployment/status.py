"""What a deployment reports about itself (the admin API, ``monorec status`` and the metrics read it):
one row per deployed version, the change log's state and its loaders' health.

Functions of the stores they read, not methods of :class:`~monorec.deployment.lifecycle.Deployment`: the
lifecycle changes versions, this module only describes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monorec.artifacts import read_json
from monorec.deployment.control_plane import LIVE_STATES, ControlPlane
from monorec.deployment.version import ServingVersion
from monorec.stream.loader import Loader
from monorec.stream.log import ChangeLog

__all__ = ["stream_report", "unhealthy", "version_rows"]


def version_rows(
    control: ControlPlane,
    versions: Mapping[str, ServingVersion],
    loaders: Mapping[str, Loader],
    log: ChangeLog,
    *,
    group: Callable[[str], str],
    checkpoint: Callable[[str], Path],
) -> list[dict[str, Any]]:
    """One row per deployed version: state, entities, loader lag, requests in flight, start offset, error.

    ``versions`` and ``loaders`` are what this process holds open (by version name); a live version it does
    not hold reports its lag from the log (its consumer group, ``group(version)``) and its entity count from
    its last checkpoint's manifest (in the folder ``checkpoint(version)``).
    """
    rows = []
    for d in control.all():
        sv = versions.get(d.version)
        lag: int | None = None
        if d.state in LIVE_STATES:
            loader = loaders.get(d.version)
            try:
                lag = loader.lag() if loader is not None else log.lag(group(d.version))
            except KeyError:
                lag = None
        entities = len(sv.index) if sv is not None else None
        if entities is None and d.state in LIVE_STATES:
            manifest = checkpoint(d.version) / "manifest.json"
            entities = read_json(manifest).get("entities") if manifest.exists() else None
        rows.append(
            {
                "version": d.version,
                "state": d.state,
                "entities": entities,
                "lag": lag,
                "in_flight": None if sv is None else sv.in_flight,
                "start_offset": d.start_offset,
                "error": d.error,
            }
        )
    return rows


def unhealthy(loaders: Mapping[str, Loader]) -> dict[str, str]:
    """Consumer group -> why its loader does not apply changes (a failing sink, a dead thread); empty when
    every loader is well. ``loaders``: consumer group -> the loader this process runs for it."""
    stopped = "the loader thread stopped"
    return {group: loader.error or stopped for group, loader in loaders.items() if not loader.healthy}


def stream_report(control: ControlPlane, log: ChangeLog, loaders: Mapping[str, Loader]) -> dict[str, Any]:
    """The change log's head, each consumer group's lag (entries not yet applied), each loader's health
    (running, error, applied and rejected counts) and the dead letters (count and the last five).
    ``loaders``: consumer group -> the loader this process runs for it."""
    letters = control.dead_letters()
    return {
        # a running loader knows what it applied but has not committed yet (commits wait for checkpoints)
        "head": log.head(),
        "lag": {g: loaders[g].lag() if g in loaders else log.lag(g) for g in log.groups()},
        "loaders": {g: loader.health() for g, loader in loaders.items()},
        "dead_letters": len(letters),
        "recent_dead_letters": [
            {"consumer": d.consumer, "offset": d.log_offset, "reason": d.reason} for d in letters[-5:]
        ],
    }
