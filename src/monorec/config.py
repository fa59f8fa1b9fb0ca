"""Project config: a TOML file -> frozen dataclasses.

The config declares the unified request context (fields, objectives, canvases) and the knobs of every
pipeline stage. :func:`parse_config` validates everything and reports every problem at once in one
:class:`~monorec.errors.ConfigError`; modules never read the raw TOML, they receive these dataclasses.

The TOML shape mirrors the dataclasses one to one, so ``parse_config(config.to_dict())`` round-trips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monorec._typed_tables import Problems, parse_dataclass, read_toml
from monorec.config_specs import (
    EVENT_KINDS,
    FIELD_KINDS,
    RESERVED_NAMES,
    SHARED_VOCABULARIES,
    SOURCE_NAMES,
    CanvasSpec,
    DeploySpec,
    EvaluateSpec,
    FeedbackSpec,
    FieldSpec,
    ImputeRule,
    IndexSpec,
    LabelSpec,
    ModelSpec,
    ObjectiveSpec,
    ProjectConfig,
    SourcesSpec,
    SplitSpec,
    TrainSpec,
)
from monorec.environments import parse_environments
from monorec.errors import ConfigError
from monorec.weight_expressions import RETRIEVAL, parse_weight

__all__ = [
    "EVENT_KINDS",
    "CanvasSpec",
    "DeploySpec",
    "EvaluateSpec",
    "FeedbackSpec",
    "FieldSpec",
    "ImputeRule",
    "IndexSpec",
    "LabelSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "ProjectConfig",
    "SplitSpec",
    "TrainSpec",
    "check_config",
    "load_config",
    "parse_config",
]

# --------------------------------------------------------------------------------------------- parsing


def parse_config(raw: dict[str, Any], source: str = "<config>") -> ProjectConfig:
    """Validates a TOML-shaped dict and returns the frozen config.

    Raises:
        ConfigError: listing every problem found (unknown keys, wrong types, dangling references...).
    """
    p = Problems()
    for key in raw:
        if key not in {
            "project",
            "catalogue",
            "context",
            "objectives",
            "canvases",
            "labels",
            "split",
            "model",
            "train",
            "evaluate",
            "sources",
            "index",
            "deploy",
            "feedback",
            "environments",
        }:
            p.add(key, "unknown section")
    project = raw.get("project", {})
    name = project.get("name") if isinstance(project, dict) else None
    if not isinstance(name, str) or not name:
        p.add("project.name", "is required (a non-empty string)")
    version = project.get("schema_version", 1) if isinstance(project, dict) else 1
    if not isinstance(version, int) or version < 1:
        p.add("project.schema_version", f"expected a positive integer, got {version!r}")
    entity_types = raw.get("catalogue", {}).get("entity_types", [])
    if not entity_types or not all(isinstance(t, str) for t in entity_types):
        p.add("catalogue.entity_types", "expected a non-empty list of strings")

    fields = []
    for i, rf in enumerate(raw.get("context", {}).get("fields", [])):
        f = parse_dataclass(FieldSpec, rf, f"context.fields[{i}]", p)
        if f is None:
            continue
        if f.kind not in FIELD_KINDS:
            continue
        if f.name in RESERVED_NAMES:
            p.add(f"context.fields[{i}].name", f"{f.name!r} is reserved by the log schema")
        if f.vocabulary is not None and f.vocabulary not in SHARED_VOCABULARIES:
            p.add(f"context.fields[{i}].vocabulary", f"expected one of {SHARED_VOCABULARIES}")
        if f.vocabulary is not None and f.kind not in ("id", "categorical", "id_list"):
            p.add(f"context.fields[{i}].vocabulary", "only id, categorical and id_list fields can share a vocabulary")
        if f.kind == "id_list" and f.vocabulary is None:
            p.add(
                f"context.fields[{i}].vocabulary", "an id_list field needs a shared vocabulary ('entity' or 'category')"
            )
        fields.append(f)
    if not fields:
        p.add("context.fields", "declare at least one context field")
    names = [f.name for f in fields]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        p.add("context.fields", f"field {dup!r} is declared twice")
    by_name = {f.name: f for f in fields}

    objectives = []
    for oname, ro in raw.get("objectives", {}).items():
        o = parse_dataclass(ObjectiveSpec, ro, f"objectives.{oname}", p, name=oname)
        if o is not None:
            objectives.append(o)
    if not raw.get("objectives"):
        p.add("objectives", "declare at least one objective")
    obj_by_name = {o.name: o for o in objectives}

    canvases = []
    for cname, rc in raw.get("canvases", {}).items():
        where = f"canvases.{cname}"
        rc = dict(rc) if isinstance(rc, dict) else rc
        impute_raw = rc.pop("impute", []) if isinstance(rc, dict) else []
        rules = []
        for j, rr in enumerate(impute_raw):
            r = parse_dataclass(ImputeRule, rr, f"{where}.impute[{j}]", p)
            if r is None:
                continue
            if (r.title_of is None) == (r.value is None):
                p.add(f"{where}.impute[{j}]", "give exactly one of title_of or value")
            if r.field not in by_name:
                p.add(f"{where}.impute[{j}].field", f"unknown context field {r.field!r}")
            if r.title_of is not None and by_name.get(r.title_of, FieldSpec("", "id")).vocabulary != "entity":
                p.add(f"{where}.impute[{j}].title_of", f"{r.title_of!r} must be an id field with vocabulary 'entity'")
            rules.append(r)
        c = parse_dataclass(CanvasSpec, rc, where, p, name=cname, impute=tuple(rules))
        if c is None:
            continue
        for fname in c.fields:
            if fname not in by_name:
                p.add(f"{where}.fields", f"unknown context field {fname!r} (declared: {', '.join(names)})")
        for oname in c.objectives:
            if oname not in obj_by_name:
                p.add(f"{where}.objectives", f"unknown objective {oname!r} (declared: {', '.join(obj_by_name)})")
        if c.primary not in c.objectives:
            p.add(f"{where}.primary", f"{c.primary!r} is not one of this canvas's objectives")
        elif c.primary in obj_by_name and obj_by_name[c.primary].kind != "binary":
            p.add(f"{where}.primary", f"{c.primary!r} must be a binary objective")
        for bname, weight in c.blend.items():
            if bname not in c.objectives:
                p.add(f"{where}.blend.{bname}", "blends an objective the canvas does not declare")
            if weight < 0:
                p.add(f"{where}.blend.{bname}", "weights must be >= 0")
        if not c.blend or sum(c.blend.values()) <= 0:
            p.add(f"{where}.blend", "needs at least one positive weight")
        if c.mix <= 0:
            p.add(f"{where}.mix", "must be > 0")
        if c.negatives < 0:
            p.add(f"{where}.negatives", "must be >= 0")
        _check_sources(c, by_name, where, p)
        for task, expression in c.weights.items():
            if task not in (*c.objectives, RETRIEVAL):
                p.add(f"{where}.weights.{task}", f"not one of the canvas's objectives nor {RETRIEVAL!r}")
            try:
                parse_weight(expression)
            except ValueError as exc:
                p.add(f"{where}.weights.{task}", str(exc))
        canvases.append(c)
    if not raw.get("canvases"):
        p.add("canvases", "declare at least one canvas")

    sections: dict[str, Any] = {}
    for key, cls in (
        ("labels", LabelSpec),
        ("split", SplitSpec),
        ("model", ModelSpec),
        ("train", TrainSpec),
        ("evaluate", EvaluateSpec),
        ("sources", SourcesSpec),
        ("index", IndexSpec),
        ("deploy", DeploySpec),
        ("feedback", FeedbackSpec),
    ):
        sections[key] = parse_dataclass(cls, raw.get(key, {}), key, p) or cls()
    split = sections["split"]
    if not (
        0 < split.valid_fraction < 1 and 0 < split.test_fraction < 1 and split.valid_fraction + split.test_fraction < 1
    ):
        p.add("split", "valid_fraction and test_fraction must be in (0, 1) and sum below 1")
    if sections["labels"].bucket_rows < 1:
        p.add("labels.bucket_rows", "must be >= 1")
    if min(sections["train"].shard_rows, sections["train"].max_train_rows, sections["train"].val_rows) < 0:
        p.add("train", "shard_rows, max_train_rows and val_rows must be >= 0 (0: no shards, no cap)")
    if sections["train"].hard_negatives < 0 or sections["train"].hard_negative_pool < 1:
        p.add("train.hard_negatives", "hard_negatives must be >= 0 and hard_negative_pool >= 1")
    for wname in sections["train"].objective_weights:
        if wname not in obj_by_name:
            p.add(f"train.objective_weights.{wname}", "unknown objective")
    model = sections["model"]
    if model.bottom == "ple" and model.ple_levels < 1:
        p.add("model.ple_levels", "must be >= 1")
    for key in ("embedding_dim", "retrieval_dim", "experts", "text_buckets", "sequence_layers", "sequence_heads"):
        if getattr(model, key) < 1:
            p.add(f"model.{key}", "must be >= 1")
    if model.sequence_heads >= 1 and model.embedding_dim % model.sequence_heads:
        p.add("model.sequence_heads", f"must divide model.embedding_dim ({model.embedding_dim})")
    if not 0 <= model.sequence_dropout < 1:
        p.add("model.sequence_dropout", "must be in [0, 1)")
    for name in model.source_inputs:
        if name not in SOURCE_NAMES[1:]:
            p.add(f"model.source_inputs.{name}", f"not an offline source (known: {', '.join(SOURCE_NAMES[1:])})")
    ev = sections["evaluate"]
    if ev.retrieval_depth < ev.k:
        p.add("evaluate.retrieval_depth", f"must be >= evaluate.k ({ev.k})")
    declared = {c.name for c in canvases}
    for canvas in ev.exclude_seen:
        if declared and canvas not in declared:
            p.add("evaluate.exclude_seen", f"unknown canvas {canvas!r}")
    if sections["train"].fusion_margin < 0:
        p.add("train.fusion_margin", "must be >= 0 (standard errors)")
    if sections["train"].fusion_cv_repeats < 0:
        p.add("train.fusion_cv_repeats", "must be >= 0")
    if sections["train"].fusion_k < 0:
        p.add("train.fusion_k", "must be >= 0 (0: evaluate.k)")
    if sections["train"].weight_average_epochs < 0:
        p.add("train.weight_average_epochs", "must be >= 0 (0: no average)")
    for key in ("sequence_canvases", "selection_canvases"):
        for canvas in getattr(sections["train"], key):
            if declared and canvas not in declared:
                p.add(f"train.{key}", f"unknown canvas {canvas!r}")

    idx = sections["index"]
    for key in ("hnsw_m", "ef_construction", "ef_search"):
        if getattr(idx, key) < 1:
            p.add(f"index.{key}", "must be >= 1")
    if not 0 < idx.compact_above <= 1:
        p.add("index.compact_above", "must be in (0, 1]")
    if idx.lexical == "qdrant" and idx.kind != "qdrant":
        p.add("index.lexical", 'sparse vectors live in the version\'s Qdrant collection: needs kind = "qdrant"')
    dep = sections["deploy"]
    for key in ("batch_size", "checkpoint_batches", "loader_batch"):
        if getattr(dep, key) < 1:
            p.add(f"deploy.{key}", "must be >= 1")
    if not 0 < dep.checkpoint_max_share <= 1:
        p.add("deploy.checkpoint_max_share", "must be in (0, 1]")
    if not 0 <= dep.canary_min_recall <= 1:
        p.add("deploy.canary_min_recall", "must be in [0, 1]")
    if idx.users == "redis" and not idx.users_redis_url:
        p.add("index.users_redis_url", 'users = "redis" needs the Redis URL of the user stores')

    columns = {o.column for o in objectives}
    fb = sections["feedback"]
    for kind in ("click", "like", "watch", "rating"):
        column = getattr(fb, kind)
        if column is not None and column not in columns:
            p.add(f"feedback.{kind}", f"{column!r} is not the column of a declared objective")
    if fb.history_field is not None:
        history = by_name.get(fb.history_field)
        if history is None or history.kind != "id_list" or history.vocabulary != "entity":
            p.add("feedback.history_field", "must be a declared id_list field with vocabulary 'entity'")
        if fb.user_field not in by_name:
            p.add("feedback.user_field", f"unknown context field {fb.user_field!r}")
        if fb.history_kind not in EVENT_KINDS:
            p.add("feedback.history_kind", f"expected one of {EVENT_KINDS}")
    for canvas in dep.user_canvases:
        spec = next((c for c in canvases if c.name == canvas), None)
        if spec is None:
            p.add("deploy.user_canvases", f"unknown canvas {canvas!r}")
        elif fb.user_field not in spec.fields:
            p.add("deploy.user_canvases", f"canvas {canvas!r} has no {fb.user_field!r} field to name the user")
    environments = parse_environments(raw.get("environments"), {c.name: c.fields for c in canvases}, p)

    if p.items:
        raise ConfigError(source, p.items)
    return ProjectConfig(
        environments=environments,
        name=str(name),
        schema_version=int(version),
        entity_types=tuple(entity_types),
        fields=tuple(fields),
        objectives=tuple(objectives),
        canvases=tuple(canvases),
        **sections,
    )


def _check_sources(canvas: CanvasSpec, fields: dict[str, FieldSpec], where: str, p: Problems) -> None:
    """A canvas's sources exist, propose at least one candidate, and have what they read in its fields."""
    used = [fields[f] for f in canvas.fields if f in fields]
    for name, depth in canvas.sources.items():
        if name not in SOURCE_NAMES:
            p.add(f"{where}.sources.{name}", f"unknown source (known: {', '.join(SOURCE_NAMES)})")
        elif not isinstance(depth, int) or depth < 1:
            p.add(f"{where}.sources.{name}", "the number of candidates must be an integer >= 1")
        elif name == "lexical" and not any(f.kind == "text" for f in used):
            p.add(f"{where}.sources.lexical", "the canvas has no text field to search with")
        elif name == "cooccurrence" and not any(f.vocabulary == "entity" for f in used):
            p.add(f"{where}.sources.cooccurrence", "the canvas has no entity field (id or history) to start from")


def load_config(path: str | Path) -> ProjectConfig:
    """Reads and validates a TOML config file.

    Raises:
        ConfigError: the file is missing, is not TOML, or has any problem (all listed).
    """
    return parse_config(read_toml(path), str(path))


def check_config(path: str | Path) -> list[str]:
    """Every problem of a config file (empty when it is valid)."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return []
