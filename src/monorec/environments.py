"""Serving environments: the knobs one deployment of a model version is served with (DESIGN section 7).

The same version can serve a latency-critical production, a precomputed low-cost environment and a
relaxed staging one; each is an ``[environments.NAME]`` table of the project config, chosen at start
(``monorec serve --env NAME``)::

    [environments.prod]
    canvases = ["home", "related", "search"]   # the others are refused with 404
    latency_budget_ms = 50                     # the default deadline; a request may only ask for less
    mode = "online"                            # or "precomputed": batch-scored top-K per key
    precompute_by = "server"                   # or "job": the tables come from `monorec precompute`
    cache_ttl_s = 30                           # 0: no answer cache
    worker_threads = 2
    max_batch = 8                              # micro-batching of concurrent requests (1: none)
    max_wait_ms = 2
    retrieval_depth = 100
    fallback = "popular"                       # or "cached" (the last good answer, else popular) or "none"

    [environments.prod.rules.home]             # business rules per canvas
    max_per_category = 3

A config without environments gets one, ``default``, with every knob at its default. Operators may keep
environments in a file of their own (only ``[environments.*]`` tables), read by :func:`load_environments`
(``monorec serve --config FILE``), so serving knobs change without publishing a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from monorec._typed_tables import Problems, parse_dataclass, read_toml
from monorec.errors import ConfigError

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "CanvasRules",
    "EnvironmentSpec",
    "ModelRuntime",
    "load_environments",
    "parse_environments",
]

DEFAULT_ENVIRONMENT = "default"
Fallback = Literal["popular", "cached", "none"]
ModelRuntime = Literal["torch", "onnx"]  # what runs the context tower and the ranker


@dataclass(frozen=True)
class CanvasRules:
    """Business rules of one canvas, applied in this order after ranking (see :mod:`monorec.serving.rules`)."""

    exclude_seen: bool = True  # drop entities listed in the context's entity-id fields (history, source item)
    dedupe_titles: bool = False  # keep the best of entities sharing a normalised title
    max_per_category: int = 0  # diversity: at most this many per first category in the lead (0: off)
    boost_types: dict[str, float] = field(default_factory=dict)  # entity type -> score factor
    boost_categories: dict[str, float] = field(default_factory=dict)  # category -> score factor
    pins: dict[str, int] = field(default_factory=dict)  # entity id -> fixed position (0 = first)


@dataclass(frozen=True)
class EnvironmentSpec:
    """One serving environment (see the module docstring)."""

    name: str
    canvases: tuple[str, ...] = ()  # canvases served (empty: every canvas of the model)
    latency_budget_ms: float = 100.0  # default deadline of a request; requests may set a shorter one
    mode: Literal["online", "precomputed"] = "online"
    # canvases whose requests naming a stored user take the version's stored encoding of that user (profile
    # and recent history, kept fresh by the change log) instead of the context tower; others encode online
    user_embeddings: tuple[str, ...] = ()
    precompute: dict[str, str] = field(default_factory=dict)  # canvas -> the context field keying its table
    precompute_k: int = 100  # answers stored per key
    precompute_max_keys: int = 20000  # keys scored per canvas (most frequent first)
    refresh_s: float = 3600.0  # how often the precomputed tables are scored again (0: only at start)
    # who scores the precomputed tables: "server" (a thread of the serving process, every refresh_s) or "job"
    # (``monorec precompute``, in process or on Ray; the server loads each table the job writes for the
    # version it serves and answers online until there is one)
    precompute_by: Literal["server", "job"] = "server"
    cache_ttl_s: float = 0.0  # identical requests within this many seconds share one answer (0: off)
    cache_size: int = 10000  # answers kept by the cache and by the last-good store
    worker_threads: int = 2  # threads running the model path
    # how long a thread running Python keeps the GIL while another waits for it (Python's default: 5 ms),
    # set by ``monorec serve`` for its process: see :func:`monorec.threads.set_gil_switch_interval`
    gil_switch_interval_ms: float = 5.0
    # what runs the context tower and the ranker: "onnx" (ONNX Runtime on the version's export, the GIL
    # released while it runs; a version published without an export is served by "torch") or "torch"
    # (PyTorch eager: the reference)
    model_runtime: ModelRuntime = "torch"
    max_batch: int = 1  # concurrent requests scored together (1: no micro-batching)
    max_wait_ms: float = 1.0  # how long a batch waits to fill up
    retrieval_depth: int = 100  # candidates retrieved and ranked before rules cut to k
    # each offline candidate source (lexical, co-occurrence, popular) answers a batch within this, or the
    # requests go on without it (their answers' ``sources`` omit it; the request's own deadline still holds)
    source_timeout_ms: float = 50.0
    fallback: Fallback = "popular"  # when the model path misses its deadline or fails
    max_k: int = 100
    max_batch_requests: int = 64  # requests in one call of the batch endpoint
    max_explicit_candidates: int = 1000  # explicit candidate ids to rank in one request
    open_reads: bool = True  # read endpoints without a token (admin and writes always need one)
    # a canary or shadow trial (monorec.deployment.trials) is aborted when its candidate, on any canvas, after
    # ``trial_min_requests`` answers there, fails or is late on more than ``trial_max_error_rate`` of them,
    # or its p99 latency exceeds ``trial_max_p99_ms`` (0: the latency budget)
    trial_max_error_rate: float = 0.05
    trial_max_p99_ms: float = 0.0
    trial_min_requests: int = 50
    rules: dict[str, CanvasRules] = field(default_factory=dict)  # canvas -> its business rules

    def serves(self, canvas: str) -> bool:
        return not self.canvases or canvas in self.canvases

    def rules_for(self, canvas: str) -> CanvasRules:
        return self.rules.get(canvas, CanvasRules())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key == "name":
                continue
            if key == "rules":
                value = {c: dict(r.__dict__) for c, r in value.items()}
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def parse_environments(raw: Any, canvas_fields: dict[str, tuple[str, ...]], p: Problems) -> dict[str, EnvironmentSpec]:
    """``[environments.*]`` tables -> specs (every problem recorded in ``p``); a default when none.

    Args:
        canvas_fields: each declared canvas -> its context fields (what rules and precompute keys refer to).
    """
    canvas_names = tuple(canvas_fields)
    if raw is None or raw == {}:
        return {DEFAULT_ENVIRONMENT: EnvironmentSpec(DEFAULT_ENVIRONMENT)}
    if not isinstance(raw, dict):
        p.add("environments", "expected a table of environments")
        return {}
    out: dict[str, EnvironmentSpec] = {}
    for name, table in raw.items():
        where = f"environments.{name}"
        table = dict(table) if isinstance(table, dict) else table
        rules_raw = table.pop("rules", {}) if isinstance(table, dict) else {}
        rules: dict[str, CanvasRules] = {}
        for canvas, rr in rules_raw.items() if isinstance(rules_raw, dict) else []:
            if canvas not in canvas_names:
                p.add(f"{where}.rules.{canvas}", f"unknown canvas (declared: {', '.join(canvas_names)})")
            parsed = parse_dataclass(CanvasRules, rr, f"{where}.rules.{canvas}", p)
            if parsed is not None:
                rules[canvas] = parsed
        env = parse_dataclass(EnvironmentSpec, table, where, p, name=name, rules=rules)
        if env is None:
            continue
        for canvas in (*env.canvases, *env.precompute, *env.user_embeddings):
            if canvas not in canvas_names:
                p.add(f"{where}", f"unknown canvas {canvas!r} (declared: {', '.join(canvas_names)})")
        for key in ("worker_threads", "max_batch", "retrieval_depth", "max_k", "max_batch_requests", "cache_size"):
            if getattr(env, key) < 1:
                p.add(f"{where}.{key}", "must be >= 1")
        for key in ("latency_budget_ms", "source_timeout_ms", "gil_switch_interval_ms"):
            if getattr(env, key) <= 0:
                p.add(f"{where}.{key}", "must be > 0")
        if env.retrieval_depth < env.max_k:
            p.add(f"{where}.retrieval_depth", f"must be >= max_k ({env.max_k}): rules need candidates to cut from")
        if not 0 <= env.trial_max_error_rate <= 1:
            p.add(f"{where}.trial_max_error_rate", "must be in [0, 1]")
        for key in ("cache_ttl_s", "max_wait_ms", "refresh_s", "trial_max_p99_ms", "trial_min_requests"):
            if getattr(env, key) < 0:
                p.add(f"{where}.{key}", "must be >= 0")
        for canvas, key in env.precompute.items():
            if canvas in canvas_fields and key not in canvas_fields[canvas]:
                p.add(f"{where}.precompute.{canvas}", f"{key!r} is not a field of canvas {canvas!r}")
        if env.mode == "precomputed" and not env.precompute:
            p.add(f"{where}.precompute", "precomputed mode needs at least one canvas -> key field")
        for canvas, rule in rules.items():
            if rule.max_per_category < 0:
                p.add(f"{where}.rules.{canvas}.max_per_category", "must be >= 0")
            if any(f <= 0 for f in (*rule.boost_types.values(), *rule.boost_categories.values())):
                p.add(f"{where}.rules.{canvas}", "boost factors must be > 0")
        out[name] = env
    return out


def load_environments(path: str | Path, canvas_fields: dict[str, tuple[str, ...]]) -> dict[str, EnvironmentSpec]:
    """The ``[environments.*]`` tables of a TOML file (a whole project config or a file of environments only).

    Raises:
        ConfigError: the file is missing, is not TOML, or has any problem (all listed).
    """
    p = Problems()
    envs = parse_environments(read_toml(path).get("environments"), canvas_fields, p)
    if p.items:
        raise ConfigError(str(path), p.items)
    return envs
