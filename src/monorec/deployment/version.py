"""A deployed model version in memory: what one request needs from one version.

A :class:`ServingVersion` bundles what one request needs from one version: the context tower (query
embedder), that version's index of item embeddings, its other candidate sources (a lexical index that
follows the same catalogue changes as the vector index, and the co-occurrence and popular lists fitted
with the model), the item features its ranker reads, and the ranker. It counts the requests pinned to it
(:mod:`monorec.deployment.router`), so it can be drained before it is freed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from monorec.artifacts import unpack_strings
from monorec.bundle import ModelBundle, context_tensors
from monorec.config import SOURCE_NAMES
from monorec.environments import ModelRuntime
from monorec.errors import ArtifactError, DeployError
from monorec.index import EntityFilter, EntityRows, VectorIndex
from monorec.models.model import MonorecModel
from monorec.models.onnx_model import OnnxModel
from monorec.retrieval import CandidateSources, CooccurrenceTable, LexicalIndex
from monorec.retrieval.deadline import DeadlineSources
from monorec.retrieval.lexical import LexicalSource
from monorec.retrieval.paced_commit import PacedCommit
from monorec.row_table import RowTable
from monorec.schema import TitleLookup
from monorec.stage_times import StageTimes, timed
from monorec.stream.changes import AnyChange, Change, UserChange, changes_frame
from monorec.users import UserStore, user_key
from monorec.users.encode import user_rows

__all__ = ["Answer", "ItemEncodings", "ItemFeatures", "ServingVersion"]

# rows a streamed batch of changes writes into the index per hold of its lock: a search of a serving
# version waits for at most this many graph inserts (~3 ms), not a loader's whole batch (B6's queries
# during ingest); larger chunks give the insert more threads, which a bulk load (no chunks) keeps
STREAM_WRITE_CHUNK = 32


class ItemFeatures(RowTable):
    """Entity id -> the item tower's features (F_i,) that the ranker reads beside the embedding."""

    def save(self, path: Path) -> None:
        self.start_save(path)()

    def start_save(self, path: Path) -> Callable[[], None]:
        """Captures the table now (see :meth:`RowTable.capture`); the returned function gathers the live
        rows and writes them into ``path`` with every row's key and which rows are live."""
        captured = self.capture()
        return lambda: np.savez(path, row_keys=captured.row_keys, live=captured.live, feats=captured.live_rows())

    @classmethod
    def load(cls, path: Path) -> ItemFeatures:
        """Reads what :meth:`save` wrote (or the older layout: ``ids`` and their ``feats``).

        Raises:
            ArtifactError: the file does not load or its parts disagree.
        """
        try:
            with np.load(path, allow_pickle=False) as arrays:
                feats = arrays["feats"]
                if "row_keys" in arrays.files:
                    row_keys, live = unpack_strings(arrays["row_keys"]), arrays["live"]
                    if live.dtype != np.bool_ or live.shape != (len(row_keys),):
                        raise ValueError(f"{len(row_keys)} row keys, a live mask of {live.shape} {live.dtype}")
                    ids = [k for k, alive in zip(row_keys, live.tolist(), strict=True) if alive]
                else:  # written before the row keys
                    ids = unpack_strings(arrays["ids"])
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: item features do not load: {exc}") from None
        if feats.ndim != 2 or len(feats) != len(ids):
            raise ArtifactError(f"{path}: item features hold {feats.shape} rows for {len(ids)} ids")
        table = cls(feats.shape[1])
        table.put(ids, feats)
        return table


class ItemEncodings(NamedTuple):
    """N catalogue rows through a version's item tower: ``vectors`` (N, D) float32 for the index,
    ``features`` (N, F_i) float32 for the ranker."""

    vectors: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class Answer:
    """What one request got: entity ids best first, their scores, and the version that produced them."""

    version: str
    ids: list[str]
    scores: list[float]


class ServingVersion:
    """One model version with its own index (see the module docstring)."""

    def __init__(
        self,
        name: str,
        bundle: ModelBundle,
        index: VectorIndex,
        features: ItemFeatures,
        titles: TitleLookup | None = None,
        lexical: LexicalSource | None = None,
        users: UserStore | None = None,
    ) -> None:
        self.name = name
        # the lexical index (in memory unless given) is filled by load_rows/apply like the vector index
        self.sources = CandidateSources(
            bundle.config,
            lexical if lexical is not None else LexicalIndex(),
            bundle.cooccurrence or CooccurrenceTable.empty(),
            bundle.popular,
        )
        self.titles = titles  # entity id -> title, for imputation rules such as related's query
        self.schema = bundle.schema  # derived from the config on each access: keep one
        self.bundle = bundle
        self.index = index
        self.features = features
        # user canvas -> stored user encodings (context features + embedding), fed by user changes
        self.users = users
        self.user_canvases = bundle.config.deploy.user_canvases if users is not None else ()
        self.asked = DeadlineSources(name, self.sources)  # the sources as serving asks them: within a deadline
        # streamed changes reach the lexical index's searches by paced commits (see retrieval.paced_commit)
        self._lexical_commit = PacedCommit(
            self.sources.lexical.commit, bundle.config.deploy.lexical_commit_s, f"{name}-lexical"
        )
        self.in_flight = 0
        self._count_lock = threading.Lock()
        self.bundle.model.eval()
        # the version's ONNX export in ONNX Runtime, for environments with ``model_runtime = "onnx"``
        folder = bundle.folder
        self.onnx = OnnxModel(folder) if folder is not None and OnnxModel.exported(folder) else None
        # the first forward of a tower (the sequence encoder above all) pays one-off set-up costs: pay them
        # here, not within the first request's deadline
        self.encode_records([{"task_type": c} for c in bundle.config.canvas_names])

    @staticmethod
    def feature_width(bundle: ModelBundle) -> int:
        frame = changes_frame([Change("upsert", "<probe>", 0, bundle.config.entity_types[0])])
        feats, _ = bundle.item_embeddings(frame)
        return int(feats.shape[1])

    @staticmethod
    def user_width(bundle: ModelBundle) -> int:
        """The width of a stored user row: context features F_c + embedding D."""
        with torch.no_grad():
            feats, emb = bundle.model.encode_context(
                context_tensors(bundle.featurizer.transform_records([{"task_type": bundle.config.canvas_names[0]}]))
            )
        return int(feats.shape[1] + emb.shape[1])

    # --------------------------------------------------------------------------------------- writes

    @torch.no_grad()
    def embed(self, catalogue: pl.DataFrame) -> ItemEncodings:
        """Catalogue rows -> their item-tower encodings (embeddings (N, D), features (N, F_i))."""
        feats, embs = self.bundle.item_embeddings(catalogue)
        return ItemEncodings(embs.cpu().numpy().astype(np.float32), feats.cpu().numpy().astype(np.float32))

    def load_rows(
        self,
        catalogue: pl.DataFrame,
        *,
        commit: bool = True,
        encoded: ItemEncodings | None = None,
        write_chunk: int | None = None,
    ) -> int:
        """Embeds and upserts catalogue rows (bulk load); returns how many were newer than the index.
        ``commit=False``: the lexical index sees them at the caller's next commit. ``encoded``: the rows'
        encodings by this version's item tower, computed elsewhere (a Ray bulk pass), row for row.
        ``write_chunk``: rows the index writes per hold of its lock (see ``RowIndex.upsert``)."""
        # only what the index will take (newer revisions, the latest of each id in the page): a replayed or
        # late change must not overwrite the features or the text of a newer revision. One loader writes a
        # version, so nothing applies in between
        ids, revisions = catalogue["entity_id"].to_list(), catalogue["revision"].to_numpy()
        keep = self.index.newer_rows(ids, revisions)
        applied = 0
        if keep:
            page = catalogue if len(keep) == catalogue.height else catalogue[keep]
            if encoded is not None and len(keep) < catalogue.height:
                encoded = ItemEncodings(encoded.vectors[keep], encoded.features[keep])
            if encoded is None:
                encoded = self.embed(page)
            rows = EntityRows(
                ids=page["entity_id"].to_list(),
                types=page["entity_type"].to_list(),
                categories=[tuple(c for c in s.split("|") if c) for s in page["categories"].fill_null("").to_list()],
                revisions=page["revision"].to_numpy().astype(np.int64),
                vectors=encoded.vectors,
            )
            self.features.put(rows.ids, encoded.features)  # before the index: a searchable entity has features
            applied = self.index.upsert(rows, write_chunk=write_chunk)
        # the text follows the index's state (after it: with Qdrant the lexical document is a sparse vector of
        # the point the index writes): every row the index holds now, written just above or by an attempt
        # that failed before its lexical write, which this replay completes (rewriting a document is harmless)
        current = self.index.current_rows(ids, revisions)
        if current:
            text = catalogue[current].select("entity_id", "title", "categories")
            self.sources.lexical.upsert(
                text["entity_id"].to_list(), text["title"].to_list(), text["categories"].to_list(), commit=commit
            )
        return applied

    def apply(self, changes: Sequence[AnyChange]) -> int:
        """Applies validated changes in order (upserts embedded with this version's item tower, user states
        with its context tower; the two never depend on each other's order)."""
        users = [c for c in changes if isinstance(c, UserChange)]
        applied = self.load_users(users) if users else 0
        batch: list[Change] = []
        for change in [*(c for c in changes if isinstance(c, Change)), None]:
            if change is not None and change.op == "upsert":
                batch.append(change)
                continue
            if batch:
                applied += self.load_rows(changes_frame(batch), commit=False, write_chunk=STREAM_WRITE_CHUNK)
                batch = []
            if change is not None:
                applied += self.index.delete([change.entity_id], [change.revision])
                # the other stores follow the index's tombstone (also when an earlier attempt wrote it and
                # failed before them): removing what is already gone is harmless
                if self.index.current_rows([change.entity_id], np.array([change.revision]), deleted=True):
                    self.features.remove([change.entity_id])
                    self.sources.lexical.delete([change.entity_id], commit=False)
        self._lexical_commit.written()  # now, or within deploy.lexical_commit_s: a commit costs milliseconds
        return applied

    @torch.no_grad()
    def load_users(self, states: Sequence[UserChange], encoded: np.ndarray | None = None) -> int:
        """Encodes user states newer than the stored ones in each user canvas and stores them; returns how
        many (user, canvas) rows it stored. ``encoded``: every (canvas, state) row of
        :func:`~monorec.users.encode.user_rows`, computed elsewhere (a Ray bulk pass).

        Raises:
            RequestError: a profile value does not fit its declared field (the loader dead-letters it).
        """
        if self.users is None or not self.user_canvases or not states:
            return 0
        keys = [user_key(c, s.user_id) for c in self.user_canvases for s in states]
        revisions = np.array([s.revision for _ in self.user_canvases for s in states], dtype=np.int64)
        keep = self.users.newer(keys, revisions)
        if not keep:
            return 0
        if encoded is not None:
            rows = encoded[keep]
        else:
            pairs = [(c, s) for c in self.user_canvases for s in states]
            rows = user_rows(self.bundle, [pairs[i] for i in keep], self.titles)
        return self.users.put([keys[i] for i in keep], revisions[keep], rows)

    def holds_user(self, user_id: str, revision: int) -> bool:
        """Whether the store holds the user's state at ``revision`` (or newer) in every user canvas."""
        if self.users is None or not self.user_canvases:
            return False
        keys = [user_key(c, user_id) for c in self.user_canvases]
        return not self.users.newer(keys, np.full(len(keys), revision, dtype=np.int64))

    def stored_users(self, canvas: str, user_ids: Sequence[str]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(found (N,) bool, context features (N, F_c), embeddings (N, D)) of users as stored for ``canvas``
        (zeros where not found). Every user is not found when the canvas keeps no user store."""
        if self.users is None or canvas not in self.user_canvases:
            return np.zeros(len(user_ids), dtype=bool), torch.zeros(0), torch.zeros(0)
        found, rows = self.users.get([user_key(canvas, u) for u in user_ids])
        dim = int(self.bundle.model_kwargs["retrieval_dim"])
        rows_t = torch.from_numpy(rows)
        return found, rows_t[:, :-dim], rows_t[:, -dim:]

    # ---------------------------------------------------------------------------------------- reads

    @torch.no_grad()
    def encode_contexts(self, canvas: str, contexts: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw contexts of one canvas -> (features (B, F_c), embeddings (B, D)) from this version's tower."""
        return self.encode_records([self.schema.normalize(canvas, c, self.titles) for c in contexts])

    def runtime(self, kind: ModelRuntime = "torch") -> MonorecModel | OnnxModel:
        """What runs the context tower and the ranker: the version's ONNX Runtime sessions for ``"onnx"``
        when it was published with its export, else the PyTorch model (the reference)."""
        return self.onnx if kind == "onnx" and self.onnx is not None else self.bundle.model

    @torch.no_grad()
    def encode_records(
        self, records: Sequence[dict[str, Any]], *, stages: StageTimes | None = None, runtime: ModelRuntime = "torch"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized records (any canvases, ``task_type`` set) -> (features (B, F_c), embeddings (B, D)),
        the time of featurizing and of the tower going to ``stages``."""
        model = self.runtime(runtime)
        with timed(stages, "featurize"):
            arrays = self.bundle.featurizer.transform_records(records)
        with timed(stages, "context_tower"):
            if isinstance(model, OnnxModel):  # ONNX Runtime reads the featurizer's numpy arrays as they are
                return model.encode_context(arrays)
            return model.encode_context(context_tensors(arrays))

    def candidate_rows(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Entity ids -> (item features (N, F_i), embeddings (N, D)) as stored by this version.

        Raises:
            KeyError: an id is not (or no longer) in the index.
        """
        return torch.as_tensor(self.features.get(ids)), torch.as_tensor(self.index.vectors_of(ids))

    def known(self, ids: Sequence[str]) -> list[str]:
        """The ids this version holds (features are stored before and removed after the index row)."""
        return self.features.known(ids)

    def indexed(self, ids: Sequence[str]) -> list[str]:
        """The given ids the index holds now, probed one by one: for the rare path where a look-up of
        several failed (an entity deleted meanwhile)."""
        out = []
        for entity_id in ids:
            try:
                self.index.vectors_of([entity_id])
            except KeyError:
                continue
            out.append(entity_id)
        return out

    @torch.no_grad()
    def rank(
        self,
        ctx_feats: torch.Tensor,
        ctx_emb: torch.Tensor,
        owner: torch.Tensor,
        item_feats: torch.Tensor,
        item_emb: torch.Tensor,
        task: torch.Tensor,
        sources: torch.Tensor | None = None,
        runtime: ModelRuntime = "torch",
    ) -> tuple[np.ndarray, np.ndarray]:
        """The requests' context rows (R, ...), each pair's request ``owner`` (N,) and the pairs' entity rows
        (N, ...) -> (ranking scores (N,), objective logits (N, O)) as float32 arrays; the score is the
        canvas's blend of objectives plus its weights of the (N, S) source scores (see :meth:`propose`;
        column 0, the retrieval score, is computed here for every candidate)."""
        model = self.runtime(runtime)
        if sources is None:
            sources = torch.zeros(len(task), len(SOURCE_NAMES))
        if isinstance(model, OnnxModel):  # its graph computes column 0 and the blend
            return model.rank(ctx_feats, ctx_emb, owner, item_feats, item_emb, task, sources)
        pair_feats, pair_emb = ctx_feats.index_select(0, owner), ctx_emb.index_select(0, owner)
        scores = sources.clone()
        scores[:, 0] = (pair_emb * item_emb).sum(dim=1)
        logits = model.rank(pair_feats, pair_emb, item_feats, item_emb, task, scores)
        return model.blend_scores(logits, task, scores).numpy(), logits.numpy()

    def propose(
        self, canvas: str, records: Sequence[dict[str, Any]], timeout_s: float | None = None
    ) -> tuple[list[dict[str, list[float]]], list[str]]:
        """Per normalized record: entity id -> its (S,) source scores from the canvas's offline sources
        (lexical, co-occurrence, popular; column 0 stays 0), only entities this version holds; and the
        sources that answered. A source that fails, or (with ``timeout_s``) a remote source that has not
        answered within ``timeout_s``, is skipped (logged, counted in ``skipped_sources``): the others
        still propose (:mod:`monorec.retrieval.deadline`)."""
        out, answered = self.asked.propose(canvas, records, timeout_s)
        held = set(self.known([e for found in out for e in found]))
        return [{e: v for e, v in found.items() if e in held} for found in out], answered

    @property
    def skipped_sources(self) -> dict[str, int]:
        """Source -> how many times it failed or was late."""
        return self.asked.skipped

    def predictions(self, logits: np.ndarray, canvas: str) -> dict[str, np.ndarray]:
        """(N, O) float32 logits -> each of the canvas's objectives in its own unit: a probability for binary
        objectives, the predicted value (de-standardized, transform inverted) for regression ones."""
        config = self.bundle.config
        stats = self.bundle.featurizer.label_stats_
        out: dict[str, np.ndarray] = {}
        for j, objective in enumerate(config.objectives):
            if objective.name not in config.canvas(canvas).objectives:
                continue
            column = logits[:, j]
            if objective.kind == "binary":
                out[objective.name] = np.exp(-np.logaddexp(0.0, -column))  # the sigmoid, without overflow
            else:
                mean, std = stats.get(objective.name, (0.0, 1.0))
                value = column.astype(np.float64) * std + mean
                if objective.transform == "log1p":
                    value = np.expm1(np.clip(value, None, 80.0))  # e^80: beyond any real quantity, still finite
                out[objective.name] = value
        return out

    @torch.no_grad()
    def recommend(
        self,
        canvas: str,
        context: dict[str, Any],
        k: int,
        *,
        where: EntityFilter | None = None,
        depth: int = 100,
        runtime: ModelRuntime = "torch",
    ) -> Answer:
        """Candidates from this version's index and (without a filter ``where``, which only the index
        applies) its other sources, then this version's ranker on their union; the towers on ``runtime``
        (see :meth:`runtime`)."""
        record = self.schema.normalize(canvas, context, self.titles)
        cf, ce = self.encode_records([record], runtime=runtime)
        extra = self.propose(canvas, [record])[0][0] if where is None else {}
        for _attempt in range(3):  # an entity deleted between search and lookup: search again
            hits = self.index.search(ce.numpy(), max(k, depth), where).row(0)
            ids = list(dict.fromkeys([e for e, _ in hits] + list(extra)))
            if not ids:
                return Answer(self.name, [], [])
            try:
                item_feats, item_emb = self.candidate_rows(ids)
                break
            except KeyError:  # deleted meanwhile
                held = set(self.indexed(list(extra)))
                extra = {e: v for e, v in extra.items() if e in held}
                continue
        else:
            raise DeployError(f"{self.name}: the index changed under three searches in a row")
        task = torch.full((len(ids),), self.schema.task_index(canvas), dtype=torch.long)
        sources = torch.tensor([extra.get(e, [0.0] * len(SOURCE_NAMES)) for e in ids], dtype=torch.float32)
        owner = torch.zeros(len(ids), dtype=torch.long)
        scores, _ = self.rank(cf, ce, owner, item_feats, item_emb, task, sources, runtime=runtime)
        order = np.argsort(-scores, kind="stable")[:k].tolist()
        return Answer(self.name, [ids[i] for i in order], [float(scores[i]) for i in order])

    # ---------------------------------------------------------------------------------- lifecycle

    def enter(self) -> None:
        with self._count_lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._count_lock:
            self.in_flight -= 1

    def stop_writes(self) -> None:
        """No commit of streamed writes is made after this (a retired version's paced lexical commit would
        otherwise fire into a closed index); what its loader applied since the last commit is dropped."""
        self._lexical_commit.close()

    def close(self) -> None:
        self.stop_writes()
        self.index.close()
        self.sources.close()
        if self.users is not None:
            self.users.close()
