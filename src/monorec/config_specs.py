"""The project config's frozen dataclasses: the unified request context (fields, objectives, canvases) and
the knobs of every pipeline stage, with the names they may take. :mod:`monorec.config` parses a TOML file
into them (and re-exports them: import them from there)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from monorec.environments import DEFAULT_ENVIRONMENT, EnvironmentSpec
from monorec.errors import ConfigError

# id_list: several ids of a shared vocabulary (e.g. a user's recent history), "|"-separated in tables
FieldKind = Literal["id", "categorical", "text", "numeric", "id_list"]
FIELD_KINDS = ("id", "categorical", "text", "numeric", "id_list")
OBJECTIVE_KINDS = ("binary", "regression")
TRANSFORMS = ("none", "log1p")
SHARED_VOCABULARIES = ("entity", "category")
BOTTOMS = ("shared_bottom", "mmoe", "ple")
WEIGHTINGS = ("fixed", "uncertainty")
# Column names the log schema owns; a context field may not reuse them.
RESERVED_NAMES = frozenset({"task_type", "canvas", "ts", "entity_id", "request_id", "split"})


@dataclass(frozen=True)
class FieldSpec:
    """One field of the unified request context."""

    name: str
    kind: FieldKind
    vocabulary: str | None = None  # "entity" / "category": share the catalogue's ids and embeddings
    max_tokens: int = 16  # text: tokens kept (words + character trigrams); id_list: most recent ids kept
    min_count: int = 1  # id/categorical: rarer training values map to the unknown index
    max_length: int = 256  # text: longest accepted value, in characters (requests beyond are refused)
    description: str = ""


@dataclass(frozen=True)
class ObjectiveSpec:
    """One prediction target of the ranker, read from a log column."""

    name: str
    kind: Literal["binary", "regression"]
    column: str
    transform: Literal["none", "log1p"] = "none"


@dataclass(frozen=True)
class ImputeRule:
    """Fill ``field`` when a request leaves it empty: from another entity's title, or a constant."""

    field: str
    title_of: str | None = None  # an id field with vocabulary "entity": use that entity's title
    value: str | None = None


@dataclass(frozen=True)
class CanvasSpec:
    """A canvas (task_type): which context fields it uses, its objectives and how they blend."""

    name: str
    fields: tuple[str, ...]
    objectives: tuple[str, ...]
    primary: str  # the binary objective that marks a relevant entity (retrieval positives, Recall@K)
    blend: dict[str, float]  # final ranking score = sum(weight * objective score)
    mix: float  # share of this canvas in the merged training set
    negatives: int = 0  # sampled negatives per positive (for logs without logged impressions)
    impute: tuple[ImputeRule, ...] = ()
    # candidate sources -> how many candidates each proposes (monorec.retrieval); the union is ranked.
    # Empty: the embedding source alone, ``evaluate.retrieval_depth`` deep
    sources: dict[str, int] = field(default_factory=dict)
    # per-sample loss weights: objective name or "retrieval" -> a polars SQL expression over the row's log
    # columns and ``age_days`` (monorec.data.weights); unlisted tasks weigh every row 1
    weights: dict[str, str] = field(default_factory=dict)


SOURCE_NAMES = ("embedding", "lexical", "cooccurrence", "popular")


@dataclass(frozen=True)
class SourcesSpec:
    """How the offline-fitted candidate sources are built (monorec.retrieval)."""

    cooccurrence_window: int = 3  # responses of one user at most this many positions apart co-occur
    cooccurrence_top_n: int = 100  # neighbours kept per entity
    # the lexical score the ranking reads: "bm25" as the engine gives it, or "relative", each request's
    # BM25 over its best match's (1.0 for the best): BM25 grows with the query's length and its words'
    # rarity, so one fusion weight means a different lexical pull for every query; relative, it does not
    lexical_score: Literal["bm25", "relative"] = "bm25"


@dataclass(frozen=True)
class LabelSpec:
    dedupe: bool = True  # keep the last outcome of a repeated (request, entity) pair
    max_events_per_user_per_day: int = 2000  # above this a user is treated as a bot and dropped
    # sampled negatives: "uniform" over the catalogue, or "popularity" (training responses ** exponent),
    # which makes the ranker learn relevance beyond popularity
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    popularity_exponent: float = 0.75
    # requests are prepared this many rows at a time (buckets by a hash of the request): what memory holds
    # in the streaming prepare. Part of the result: the prepared rows are ordered by time within a bucket
    bucket_rows: int = 1_000_000


@dataclass(frozen=True)
class SplitSpec:
    valid_fraction: float = 0.1  # share of the time range (by event quantile) held out for validation
    test_fraction: float = 0.1


@dataclass(frozen=True)
class ModelSpec:
    embedding_dim: int = 32  # every id/categorical/text embedding
    retrieval_dim: int = 64  # context and item tower output
    tower_hidden: tuple[int, ...] = (128,)  # context/item tower MLP
    bottom: Literal["shared_bottom", "mmoe", "ple"] = "mmoe"
    experts: int = 4  # MMoE experts; PLE shared experts
    task_experts: int = 1  # PLE experts owned by each canvas
    ple_levels: int = 2
    expert_hidden: tuple[int, ...] = (128,)
    canvas_tower_hidden: tuple[int, ...] = (64,)
    text_buckets: int = 32768  # hashing buckets for text tokens (shared by every text field)
    dropout: float = 0.0
    # how an entity history (id_list field over the entity vocabulary) is read: "transformer" (causal
    # self-attention, SASRec), "gru" (GRU4Rec) or "mean" (order-free); see monorec.models.sequence
    sequence_encoder: Literal["mean", "gru", "transformer"] = "transformer"
    sequence_layers: int = 2
    sequence_heads: int = 2  # embedding_dim must be a multiple
    sequence_dropout: float = 0.2  # on the history's embeddings and inside the transformer
    # the offline candidate sources ("lexical", "cooccurrence", "popular") whose score of a candidate the
    # ranker reads as an input (monorec.models.model); none by default: measured on the synthetic world
    # (docs/benchmarks.md), they let search fit in two epochs while home needs six, and the one validation
    # score then stops every canvas early (home fell to popularity's level); and co-occurrence and
    # popularity are counted over the training rows' own period, which serving never sees
    source_inputs: tuple[str, ...] = ()
    # the ranker reads how each text field of the context (a query) matches the candidate's title: the
    # element-wise product and the cosine of their mean word embeddings (monorec.models.model). Off by
    # default: on the synthetic world it lifts the ranker alone on search (validation NDCG@10 0.034 ->
    # 0.053 over 3 seeds) but not what serving ranks by, the ranker fused with the sources, on any canvas
    # (docs/benchmarks.md, "The query's match with the title")
    text_match: bool = False
    # the ranker reads how each category field of the context (browse's category) matches the candidate's
    # categories: the product and the cosine of their category embeddings (monorec.models.model). Off by
    # default: see docs/benchmarks.md, "The browsed category's match"
    category_match: bool = False


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 8
    batch_size: int = 512
    lr: float = 3e-3  # dense parameters (AdamW)
    # embedding tables: SparseAdam (row-wise updates) when they are sparse, else their own AdamW group
    embedding_lr: float = 1e-2
    weight_decay: float = 0.01  # AdamW's, on the dense parameters (never on the embedding tables)
    seed: int = 0
    patience: int = 3  # epochs without validation improvement before stopping
    loss_weighting: Literal["fixed", "uncertainty"] = "uncertainty"
    objective_weights: dict[str, float] = field(default_factory=dict)  # fixed weights (default 1.0)
    retrieval_weight: float = 1.0
    temperature: float = 0.05  # softmax temperature of the retrieval loss (unit-norm embeddings)
    # retrieval is trained with the softmax over the WHOLE catalogue when it has at most this many entities
    # (exact, and popularity needs no correction); above, with a sampled softmax: in-batch and uniform
    # negatives with logQ correction
    full_softmax_max: int = 200_000
    random_negatives: int = 256  # sampled softmax: uniform catalogue negatives per batch, beside in-batch ones
    # sampled softmax: per query, this many hard negatives mined from the retrieval itself (the current
    # towers' top entities for the query among ``hard_negative_pool`` uniform samples, the positive excluded)
    hard_negatives: int = 0
    hard_negative_pool: int = 2048
    # the ranker may also learn from negatives drawn the way serving presents candidates: per positive row
    # that retrieval found, this many entities drawn from the retrieval's top candidates. Off by default:
    # measured on MovieLens's VALIDATION requests, 4 of them made the ranker alone invert the retrieval
    # (search NDCG@10 0.217 -> 0.0, home 0.0084 -> 0.0058), and on eight synthetic worlds' they cut the
    # browse ranker alone by a quarter (docs/benchmarks.md, "Negatives from the served candidates")
    retrieval_negatives: int = 0
    # entity histories: every prefix predicts the next entity (one causal pass per row); the weight of that
    # loss, and how many prefixes of each row enter it (0: every prefix)
    sequence_weight: float = 1.0
    sequence_prefixes: int = 4
    # the canvases whose rows train every prefix: those whose context is the user and the history, so that
    # "what came next in the history" is what the canvas answers (a feed); on a search row the next history
    # entity was clicked for another query, and the row's query would teach the wrong thing
    sequence_canvases: tuple[str, ...] = ("home",)
    device: str = "auto"  # "auto": CUDA when present, else CPU
    # intra-op CPU threads while training (0: the cores this process may use). Part of what makes a run
    # reproducible: float sums split among a different number of threads round differently
    threads: int = 0
    # share of context ids (id fields) replaced by the "unknown" index during training, so that the
    # cold-start sentinel is learned and the model also leans on the other fields (history, query...);
    # histories are regularised by model.sequence_dropout instead
    id_dropout: float = 0.0
    # validation scores, and the bundle keeps, an exponential moving average of the weights over the last
    # this-many epochs of steps (0: the last step's weights; monorec.weight_average)
    weight_average_epochs: float = 0.0
    # model selection: "ndcg" (validation NDCG@k of the ranker alone, averaged over requests), "served"
    # (validation NDCG@k of what serving ranks by: the ranker fused with the candidate sources, the fusion
    # weights chosen on the same validation requests after every epoch), or "loss" (validation loss over
    # every validation row; smoother when a canvas's validation requests are few and come from few users)
    selection: Literal["ndcg", "served", "loss"] = "ndcg"
    val_requests: int = 1000  # validation requests per canvas for NDCG selection (fewer: noisier choice)
    # validation rows whose losses are the learning curves (and the "loss" selection): above this, a seeded
    # sample of whole requests of about this many rows, so that a large validation split is not held whole
    val_rows: int = 200_000
    # the canvases whose validation NDCG selects the epoch (empty: every canvas). Every canvas's
    # validation is still measured and recorded; a canvas whose validation requests are too few or come from
    # too few users to tell epochs apart would otherwise pick the epoch for all of them
    selection_canvases: tuple[str, ...] = ()
    # the fusion of the candidate sources (monorec.evaluation.fusion.choose_weights) keeps a change of a
    # source's weight only when its gain on the validation requests exceeds this many standard errors of the
    # per-request gains (0: any gain): few validation requests let a blend win by chance
    fusion_margin: float = 0.0
    # the fusion also estimates its fitted blend's held-out NDCG by this many 2-fold splits of the validation
    # requests, and keeps a simple order (the ranker alone, one source's order alone) that beats that
    # estimate on validation (0: always the fitted blend)
    fusion_cv_repeats: int = 0
    # the fusion chooses its weights by validation NDCG at this depth (0: evaluate.k): deeper, a comparison
    # of two blends reads where each request's relevant entities sit among the candidates, not only the few
    # that reach the top k (less noise with few validation requests); reports stay at evaluate.k
    fusion_k: int = 0
    # how the fusion chooses: "grid" (coordinate ascent over a grid of weights by validation NDCG),
    # "softmax" (the weights that maximise the likelihood of the relevant candidates among all the
    # candidates: smooth, reads every candidate's position; monorec.evaluation.fusion.fit_softmax), or
    # "either" (per canvas the one of the two that scores higher on held-out halves of the validation), or
    # "bagged" (per source the median of the grid's choices on bootstrap resamples of the validation)
    fusion_method: Literal["grid", "softmax", "either", "bagged"] = "grid"
    max_train_rows: int = 0  # cap on merged training rows per epoch (0: all)
    # training rows larger than memory: each epoch reads the merged rows in shards of this many rows (in
    # a seeded order of shards, a fresh one each epoch), featurizing one shard at a time (0: one table)
    shard_rows: int = 0


@dataclass(frozen=True)
class EvaluateSpec:
    k: int = 10
    retrieval_depth: int = 100  # candidates retrieved from the full catalogue before ranking
    # canvases whose evaluation never answers (nor counts as a target) what the user responded to in training:
    # a feed recommends new things, while search, browse and related may rightly find known ones. Whatever
    # the choice, it never depends on the test labels (monorec.evaluation.requests)
    exclude_seen: tuple[str, ...] = ("home",)
    max_requests: int = 2000  # test requests per canvas (seeded sample) for Recall/NDCG
    # the request sample's seed: the evaluation's own, so that models trained with any seed are measured on
    # the same requests (the paired comparisons and the gate check it by fingerprint)
    seed: int = 0
    # the release gate refuses a SIGNIFICANT drop (paired bootstrap 95% CI below 0) larger than this share of
    # the baseline's value (0.05: 5%), per canvas and metric (monorec.evaluation.gate)
    gate_tolerance: float = 0.05


@dataclass(frozen=True)
class IndexSpec:
    """The vector index each deployed version searches (see :mod:`monorec.index`)."""

    # exact: faiss flat; hnsw: faiss HNSW; hnswlib: hnswlib's HNSW (monorec[hnswlib]); qdrant: collections
    kind: Literal["exact", "hnsw", "hnswlib", "qdrant"] = "exact"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    # a filtered search over at most this many entities is answered exactly (brute force over the subset)
    exact_below: int = 20000
    compact_above: float = 0.25  # rebuild the graph when this share of its rows are deleted or overwritten
    qdrant_url: str = ""  # "" : qdrant-client's local mode in the deployment folder; else a server URL
    # each version's lexical index: "tantivy" (a folder per version) or "qdrant" (BM25 sparse vectors in
    # the version's collection, beside the dense ones: needs kind = "qdrant"); see monorec.retrieval
    lexical: Literal["tantivy", "qdrant"] = "tantivy"
    # each version's user store (see monorec.users): "local" (in memory, saved with each index checkpoint)
    # or "redis" (two hashes per version at ``users_redis_url``, shared by replicas on every host)
    users: Literal["local", "redis"] = "local"
    users_redis_url: str = ""


@dataclass(frozen=True)
class DeploySpec:
    """Bulk loading, validation and streaming of a deployed version (see :mod:`monorec.deployment`)."""

    batch_size: int = 4096  # entities embedded per bulk batch
    checkpoint_batches: int = 64  # bulk batches between checkpoints (a crash resumes from the last one)
    # and at most this share of the bulk pass in checkpoints: each one is a full snapshot whose cost grows
    # with the index, so a fixed cadence alone makes the pass quadratic in the catalogue's size
    checkpoint_max_share: float = 0.2
    canary_queries: int = 200  # random catalogue embeddings searched in the new index and exactly
    canary_min_recall: float = 0.9  # required recall@10 of the index against exact search
    drain_timeout_s: float = 30.0  # how long a switch waits for requests still on the old version
    # how long a switch waits for every live replica to serve the new version (a replica that takes longer,
    # e.g. still loading it, is logged and the switch returns; see monorec.deployment.replica)
    replica_ack_s: float = 30.0
    loader_batch: int = 512  # changes read from the log per step
    # a version's loader reads again no sooner than this after a read that found fewer than loader_batch
    # changes: a steady stream is applied in larger batches (B6: the loaders' CPU against the queries');
    # a change after a quiet spell is read at once, one right behind a batch waits up to this long
    loader_linger_s: float = 0.05
    # between a serving loader's index checkpoints: the log is the write-ahead log, so this bounds the replay
    # after a crash; each checkpoint writes a full snapshot, so shorter means more I/O and more tail latency
    loader_checkpoint_s: float = 60.0
    # at most one commit of a version's lexical index per this many seconds while changes stream (each
    # commit is a new segment: files, an fsync, merges); a streamed change is searchable by its words
    # within it (docs/benchmarks.md B6: 0.1 cut the commits of 1,000 changes/s 736 -> 217 in 10 s and
    # queries during ingest 21-31%). 0: a commit per batch of changes (the default until the race behind a
    # kill -9 failure seen once was found and fixed: LexicalIndex.commit reloads under its lock)
    lexical_commit_s: float = 0.1
    # the canvases whose context encodes a user alone (home, notify): each version keeps, per known user, its
    # context tower's encoding of the user's stored state in each of them (monorec.users; () : no user store)
    user_canvases: tuple[str, ...] = ()


# what users do with an answer's entities (POST /v1/events; monorec.feedback)
EVENT_KINDS = ("impression", "click", "like", "watch", "rating")


@dataclass(frozen=True)
class FeedbackSpec:
    """Which log column each kind of user event sets when the feedback journal is exported as training
    logs (monorec.feedback.export); None: that kind sets nothing. An exported pair (request, entity)
    without a click has the click column 0; like is 0 on a clicked pair without a like."""

    click: str | None = None
    like: str | None = None
    watch: str | None = None  # the sum of the pair's watch values
    rating: str | None = None  # the pair's last rating
    # serving: a request that names the user (``user_field``) but gives no ``history_field`` gets the
    # entities of the user's most recent ``history_kind`` events as its history (None: never filled)
    history_field: str | None = None
    history_kind: str = "click"
    user_field: str = "user_id"


@dataclass(frozen=True)
class ProjectConfig:
    """A whole project config. Canvas order defines ``task_type`` indices."""

    name: str
    schema_version: int
    entity_types: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    objectives: tuple[ObjectiveSpec, ...]
    canvases: tuple[CanvasSpec, ...]
    labels: LabelSpec = LabelSpec()
    split: SplitSpec = SplitSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    sources: SourcesSpec = SourcesSpec()
    index: IndexSpec = IndexSpec()
    deploy: DeploySpec = DeploySpec()
    feedback: FeedbackSpec = FeedbackSpec()
    environments: dict[str, EnvironmentSpec] = field(default_factory=dict)  # serving environments by name

    def field(self, name: str) -> FieldSpec:
        return next(f for f in self.fields if f.name == name)

    def objective(self, name: str) -> ObjectiveSpec:
        return next(o for o in self.objectives if o.name == name)

    def canvas(self, name: str) -> CanvasSpec:
        return next(c for c in self.canvases if c.name == name)

    def environment(self, name: str) -> EnvironmentSpec:
        """A serving environment by name (``default`` exists when the config declares none).

        Raises:
            ConfigError: no environment of that name.
        """
        declared = self.environments or {DEFAULT_ENVIRONMENT: EnvironmentSpec(DEFAULT_ENVIRONMENT)}
        if name not in declared:
            raise ConfigError("environments", [f"{name}: unknown environment (declared: {', '.join(declared)})"])
        return declared[name]

    @property
    def canvas_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.canvases)

    def only_canvases(self, names: typing.Iterable[str]) -> ProjectConfig:
        """The same config restricted to some canvases (baseline mode trains one per canvas)."""
        keep = tuple(c for c in self.canvases if c.name in set(names))
        kept = {c.name for c in keep}
        evaluate = dataclasses.replace(
            self.evaluate, exclude_seen=tuple(c for c in self.evaluate.exclude_seen if c in kept)
        )
        train = dataclasses.replace(
            self.train,
            sequence_canvases=tuple(c for c in self.train.sequence_canvases if c in kept),
            selection_canvases=tuple(c for c in self.train.selection_canvases if c in kept),
        )
        return dataclasses.replace(self, canvases=keep, evaluate=evaluate, train=train)

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict; ``parse_config(cfg.to_dict())`` gives back an equal config."""

        def clean(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                return {k: clean(v) for k, v in dataclasses.asdict(obj).items() if v is not None}
            if isinstance(obj, tuple | list):
                return [clean(v) for v in obj]
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items() if v is not None}
            return obj

        return {
            "project": {"name": self.name, "schema_version": self.schema_version},
            "catalogue": {"entity_types": list(self.entity_types)},
            "context": {"fields": [clean(f) for f in self.fields]},
            "objectives": {o.name: {k: v for k, v in clean(o).items() if k != "name"} for o in self.objectives},
            "canvases": {c.name: {k: v for k, v in clean(c).items() if k != "name"} for c in self.canvases},
            "labels": clean(self.labels),
            "split": clean(self.split),
            "model": clean(self.model),
            "train": clean(self.train),
            "evaluate": clean(self.evaluate),
            "sources": clean(self.sources),
            "index": clean(self.index),
            "deploy": clean(self.deploy),
            "feedback": clean(self.feedback),
            "environments": {name: env.to_dict() for name, env in self.environments.items()},
        }
