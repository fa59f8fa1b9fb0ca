"""A local registry of immutable model versions.

``root/versions/vNNNN/`` holds a model bundle (see :mod:`monorec.bundle`) plus ``metrics.json``, and a
manifest with every file's checksum. Versions are written atomically, never overwritten, and their files
are made read-only. ``root/registry.sqlite`` is the control plane: one row per version with its state,
and the ``live`` pointer.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monorec.artifacts import read_json, verify_manifest
from monorec.bundle import ModelBundle
from monorec.config import ProjectConfig, parse_config
from monorec.environments import EnvironmentSpec, load_environments
from monorec.errors import GateError, RegistryError
from monorec.evaluation.compare import NotComparable
from monorec.evaluation.gate import GateResult, compare_reports

__all__ = ["Registry", "VersionInfo"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY, created_at REAL NOT NULL, schema_fingerprint TEXT NOT NULL,
    state TEXT NOT NULL, parent TEXT);
CREATE TABLE IF NOT EXISTS pointers (name TEXT PRIMARY KEY, version TEXT NOT NULL REFERENCES versions(version));
"""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created_at: float
    schema_fingerprint: str
    state: str
    parent: str | None


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.root / "registry.sqlite", timeout=30)) as db, db:
            yield db

    def path(self, version: str) -> Path:
        return self.root / "versions" / version

    def versions(self) -> list[VersionInfo]:
        with self._db() as db:
            rows = db.execute(
                "SELECT version, created_at, schema_fingerprint, state, parent FROM versions ORDER BY version"
            )
            return [VersionInfo(*r) for r in rows.fetchall()]

    def live(self) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT version FROM pointers WHERE name = 'live'").fetchone()
        return row[0] if row else None

    def set_live(self, version: str) -> None:
        if not any(v.version == version for v in self.versions()):
            raise RegistryError(f"unknown version {version!r}")
        with self._db() as db:
            db.execute(
                "INSERT INTO pointers(name, version) VALUES ('live', ?) "
                "ON CONFLICT(name) DO UPDATE SET version = excluded.version",
                (version,),
            )

    def config(self, version: str) -> ProjectConfig:
        """A version's project config alone (no weights loaded), e.g. for its entity types."""
        if not self.path(version).exists():
            raise RegistryError(f"unknown version {version!r} in {self.root}")
        path = self.path(version) / "config.json"
        return parse_config(read_json(path), str(path))

    def environment(self, name: str, config_file: str | Path | None = None) -> EnvironmentSpec:
        """The serving environment ``name``: from ``config_file``'s ``[environments.*]`` tables when given,
        else from the newest published version's config.

        Raises:
            ConfigError: no environment of that name, or the file has problems. RegistryError: no version.
        """
        versions = self.versions()
        if not versions:
            raise RegistryError(f"registry {self.root} has no version; publish one first")
        config = self.config(versions[-1].version)
        if config_file is not None:
            envs = load_environments(config_file, {c.name: c.fields for c in config.canvases})
            config = dataclasses.replace(config, environments=envs)
        return config.environment(name)

    def metrics(self, version: str) -> dict[str, Any]:
        return dict(read_json(self.path(version) / "metrics.json"))

    def load(self, version: str, device: str = "cpu") -> ModelBundle:
        """Loads a version (checksums verified; weights via safetensors, never unpickled)."""
        if not self.path(version).exists():
            raise RegistryError(f"unknown version {version!r} in {self.root}")
        return ModelBundle.load(self.path(version), device=device)

    def gate(
        self, metrics: dict[str, Any], tolerance: float, baseline: dict[str, Any] | None = None
    ) -> GateResult | None:
        """The candidate against the live version (its published metrics, or ``baseline``: the live version
        measured again on the candidate's requests); None when nothing is live yet."""
        live = self.live()
        if live is None:
            return None
        return compare_reports(metrics, baseline if baseline is not None else self.metrics(live), tolerance=tolerance)

    @staticmethod
    def comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Whether two reports were measured on the same requests (what the gate needs)."""
        try:
            compare_reports(a, b, tolerance=0.0)
        except NotComparable:
            return False
        return True

    def publish(
        self,
        bundle: ModelBundle,
        metrics: dict[str, Any],
        *,
        tolerance: float | None = None,
        force: bool = False,
        make_live: bool = True,
        baseline: dict[str, Any] | None = None,
        export_onnx: bool | None = None,
    ) -> str:
        """Gates the candidate against the live version, then writes it as the next immutable version, with
        its ONNX export when ``export_onnx`` (default: when one of its config's environments serves through
        ONNX Runtime, ``model_runtime = "onnx"``).

        Raises:
            RegistryError: the metrics were computed for another model (or name none, unless ``force``).
            NotComparable: the metrics and the live version's were measured on other requests (unless
                ``force``).
            GateError: a canvas regresses significantly beyond the tolerance (and ``force`` is False).
        """
        checksum = (metrics.get("model") or {}).get("checksum")
        if checksum is not None and checksum != bundle.checksum():
            raise RegistryError(
                f"the metrics were computed for model {checksum}, not this one ({bundle.checksum()}): evaluate it"
            )
        if checksum is None and not force:
            raise RegistryError("the metrics name no model checksum (not written by evaluate); evaluate this model")
        tol = bundle.config.evaluate.gate_tolerance if tolerance is None else tolerance
        try:
            result = self.gate(metrics, tol, baseline)
        except NotComparable:
            if not force:
                raise
            result = None  # forced: published without a comparison
        if result is not None and not result.passed and not force:
            raise GateError(result.regressions)
        existing = [v.version for v in self.versions()]
        on_disk = [p.name for p in (self.root / "versions").iterdir() if p.name.startswith("v")]
        number = max([int(v[1:]) for v in existing + on_disk] + [0]) + 1
        version = f"v{number:04d}"
        meta = {
            **bundle.meta,
            "version": version,
            "published_at": time.time(),
            "parent": self.live(),
            "gate": None if result is None else {"passed": result.passed, "rows": result.rows},
        }
        target = self.path(version)
        if export_onnx is None:
            export_onnx = any(env.model_runtime == "onnx" for env in bundle.config.environments.values())
        dataclasses.replace(bundle, meta=meta).save(
            target, overwrite=False, extra={"metrics.json": metrics}, export_onnx=export_onnx
        )
        for p in target.iterdir():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        with self._db() as db:
            db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, 'published', ?)",
                (version, time.time(), bundle.schema.fingerprint(), meta["parent"]),
            )
        if make_live:
            self.set_live(version)
        return version

    def verify(self, version: str) -> None:
        """Raises ArtifactError if any file of the version is missing or was modified."""
        verify_manifest(self.path(version))
