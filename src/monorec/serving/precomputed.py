"""Precomputed mode: top-K answers batch-scored per key (a user, a source item, a category) and refreshed
on a schedule, for environments that trade freshness for cost (``mode = "precomputed"``).

Each table is scored by ONE version through the same model path as online requests (rules included) and
serves only while that version is the serving one: after a switch the engine answers online until the
new version's tables are scored. A key without a table entry (a new user) is answered online.

Who scores (``precompute_by``):

- ``"server"``: a thread of the serving process, every ``refresh_s`` and after each switch;
- ``"job"``: a batch job, ``monorec precompute`` (in one process, or on Ray Data:
  :mod:`monorec.distributed.batch_scoring`), scores a frozen snapshot of the version
  (:class:`~monorec.deployment.snapshot.VersionSnapshot`) and writes its tables into the deployment folder
  (``precomputed/ENV/VERSION/``, complete or absent: :func:`~monorec.artifacts.atomic_dir`); every serving
  process loads the newest table of the version it serves, checksums verified, within ``JOB_POLL_S``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import TypeAdapter

from monorec.artifacts import MANIFEST, atomic_dir, verify_manifest
from monorec.environments import EnvironmentSpec
from monorec.errors import ArtifactError
from monorec.serving.messages import Candidates, RecommendRequest, ScoredEntity
from monorec.serving.model_path import ModelPath, Work

if TYPE_CHECKING:
    from monorec.data.features import Featurizer
    from monorec.deployment.version import ServingVersion

__all__ = [
    "PrecomputedTables",
    "TableKeys",
    "precompute_keys",
    "read_tables",
    "score_keys",
    "score_tables",
    "tables_path",
    "write_tables",
]

SCORE_BATCH = 256  # keys scored together: one context forward, one search, one ranker forward
JOB_POLL_S = 1.0  # how often a server looks for a newer job-written table
TABLE_FILE = "tables.parquet"
TABLE_SCHEMA = pa.schema([("canvas", pa.string()), ("key", pa.string()), ("items", pa.binary())])
log = logging.getLogger(__name__)
_ITEMS = TypeAdapter(list[ScoredEntity])

TableKeys = tuple[str, str, list[str]]  # (canvas, the context field keying it, the key values to score)
TableRow = tuple[str, str, bytes]  # (canvas, key value, its ranked entities as JSON)


def precompute_keys(featurizer: Featurizer, env: EnvironmentSpec) -> list[TableKeys]:
    """The keys an environment's tables hold: per canvas, the values of its key field the version knows
    (most frequent first for entity fields), at most ``precompute_max_keys``."""
    return [
        (canvas, field, featurizer.known_values(field)[: env.precompute_max_keys])
        for canvas, field in env.precompute.items()
    ]


def score_keys(
    model: ModelPath, version: ServingVersion, canvas: str, field: str, values: Sequence[str]
) -> list[bytes]:
    """Each key's answer (``precompute_k`` entities, JSON), scored ``SCORE_BATCH`` keys at a time.

    Raises:
        Exception: the model path failed on a key (a table is complete or not written).
    """
    k = model.env.precompute_k
    out: list[bytes] = []
    for start in range(0, len(values), SCORE_BATCH):
        works = [
            model.validate(
                RecommendRequest(canvas=canvas, context={field: v}, k=k, candidates=Candidates()), version, max_k=k
            )
            for v in values[start : start + SCORE_BATCH]
        ]
        for result in model.rank(version, works):
            if isinstance(result, BaseException):
                raise result
            out.append(_ITEMS.dump_json(result.items))
    return out


def score_tables(model: ModelPath, version: ServingVersion, keys: Iterable[TableKeys]) -> Iterator[TableRow]:
    """Every key's row, in this process."""
    for canvas, field, values in keys:
        yield from zip([canvas] * len(values), values, score_keys(model, version, canvas, field, values), strict=True)


def tables_path(root: str | Path, env: str, version: str) -> Path:
    """Where a job writes the tables of ``env`` scored by ``version`` in the deployment folder ``root``."""
    return Path(root) / "precomputed" / env / version


def write_tables(path: Path, rows: Iterable[TableRow], *, manifest: dict[str, Any], batch: int = 10_000) -> int:
    """Writes the rows as ``path`` (replacing a previous table whole, never half-written); returns how many.

    Rows are written ``batch`` at a time, so a table larger than memory streams through."""
    written = 0
    with atomic_dir(path, manifest=manifest) as tmp, pq.ParquetWriter(tmp / TABLE_FILE, TABLE_SCHEMA) as out:
        chunk: list[TableRow] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                out.write_table(_arrow(chunk))
                written, chunk = written + len(chunk), []
        out.write_table(_arrow(chunk))
        written += len(chunk)
        out.close()  # before atomic_dir checksums the file
    return written


def _arrow(rows: list[TableRow]) -> pa.Table:
    canvases, keys, items = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table(
        [pa.array(canvases, pa.string()), pa.array(keys, pa.string()), pa.array(items, pa.binary())],
        schema=TABLE_SCHEMA,
    )


def read_tables(path: Path) -> tuple[dict[tuple[str, str], bytes], dict[str, Any]]:
    """A job's tables: (canvas, key) -> answer JSON, and the manifest.

    Raises:
        ArtifactError: incomplete, modified or corrupt (checksums verified).
    """
    manifest = verify_manifest(path)
    table = pq.read_table(path / TABLE_FILE, schema=TABLE_SCHEMA)
    columns = table.to_pydict()
    return dict(zip(zip(columns["canvas"], columns["key"], strict=True), columns["items"], strict=True)), manifest


class PrecomputedTables:
    """(canvas, key value) -> ranked entities of one version; scored (or loaded) in a background thread."""

    def __init__(self, model: ModelPath) -> None:
        self.model = model
        self.env = model.env
        self.version: str | None = None
        # entries are JSON bytes: one object each where live models would be ~100 per key, all walked by every
        # full garbage collection (tables hold up to precompute_max_keys x precompute_k entities)
        self._tables: dict[tuple[str, str], bytes] = {}
        self._loaded: tuple[str, int, int] | None = None  # the job table held: (version, inode, mtime)
        self._refused: tuple[str, int, int] | None = None  # the last job table that failed its checksums
        self.refreshes = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monorec-precompute", daemon=True)
        self._thread.start()

    def answer(self, work: Work, version: str) -> list[ScoredEntity] | None:
        """The stored answer for this request, or None (not this version's table, no entry, explicit
        candidates, or too few left after the request's filters)."""
        request = work.request
        field = self.env.precompute.get(request.canvas)
        if field is None or request.candidates.ids is not None:
            return None
        if self.version != version:
            self._wake.set()  # a switch happened: score (or look for) the new version's tables
            return None
        value = request.context.get(field)
        raw = self._tables.get((request.canvas, str(value))) if value is not None else None
        if raw is None:
            return None
        stored = _ITEMS.validate_json(raw)
        where = work.where
        out = [
            e
            for e in stored
            if e.entity_id not in work.excluded
            and (where is None or not where.entity_types or e.entity_type in where.entity_types)
            and (where is None or not where.categories or any(c in where.categories for c in e.categories))
        ]
        if len(out) < request.k and len(stored) == self.env.precompute_k:
            return None  # filtered too far: the online path can retrieve deeper
        return out[: request.k]

    def refresh(self) -> None:
        """Scores every table with the serving version (or, ``precompute_by = "job"``, loads the job's newest
        table of that version) and swaps them in at once."""
        if self.env.precompute_by == "job":
            self._load_job_table()
            return
        with self.model.deployment.router.pin() as version:
            keys = precompute_keys(version.bundle.featurizer, self.env)
            tables = {(canvas, key): items for canvas, key, items in score_tables(self.model, version, keys)}
            self._tables, self.version = tables, version.name
            self.refreshes += 1

    def _load_job_table(self) -> None:
        current = self.model.deployment.router.current
        if current is None:
            return
        path = tables_path(self.model.deployment.root, self.env.name, current.name)
        try:
            stat = (path / MANIFEST).stat()
        except FileNotFoundError:
            return  # no job has scored this version yet: answered online
        identity = (current.name, stat.st_ino, stat.st_mtime_ns)
        if identity in (self._loaded, self._refused):
            return
        try:
            tables, manifest = read_tables(path)
        except ArtifactError as exc:  # said once per table; the next job's table is tried when it appears
            self._refused = identity
            log.error("precomputed tables of %s refused: %s", current.name, exc)
            return
        self._tables, self.version, self._loaded = tables, current.name, identity
        self.refreshes += 1
        log.info(
            "precomputed tables of %s loaded from %s (%d keys, scored %s)",
            current.name,
            path,
            len(tables),
            manifest.get("scored_at"),
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.model.deployment.router.current is not None:
                try:
                    self.refresh()
                except Exception:  # requests are answered online meanwhile; retried at the next tick
                    log.exception("scoring the precomputed tables failed")
            if self.env.precompute_by == "job":
                timeout: float | None = JOB_POLL_S
            else:
                timeout = 1.0 if self.version is None else (self.env.refresh_s or None)  # 0: only on a switch
            self._wake.wait(timeout)
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
