"""The unified request context: the one contract shared by labels, features, training and serving.

Every training row and every request carries the same record: all context fields declared in the config
plus ``task_type`` (the canvas). A field the canvas does not use holds the sentinel (``None`` in tables,
index 0 after featurization), so "missing" is a value the model learns rather than a crash. Imputation
rules fill some empty fields per canvas (e.g. on ``related`` the source item's title stands in as query).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import polars as pl

from monorec.config import CanvasSpec, FieldSpec, ProjectConfig
from monorec.errors import RequestError

__all__ = ["MISSING", "UNKNOWN", "ContextSchema"]

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)

MISSING = "<missing>"  # a field the canvas does not use, or that the request left empty
UNKNOWN = "<unknown>"  # a value never seen in training (cold start): a learned embedding, not an error

MAX_NUMBER = 1e15  # numeric context values beyond this are refused (and huge ints would not convert)

TitleLookup = Callable[[str], str | None]


@dataclass(frozen=True)
class ContextSchema:
    """The unified context derived from a :class:`ProjectConfig`.

    Attributes:
        fields: every context field, in declaration order.
        canvases: every canvas; ``task_type`` index = position here.
        version: the config's ``schema_version``.
    """

    fields: tuple[FieldSpec, ...]
    canvases: tuple[CanvasSpec, ...]
    version: int

    @classmethod
    def from_config(cls, config: ProjectConfig) -> ContextSchema:
        return cls(fields=config.fields, canvases=config.canvases, version=config.schema_version)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def canvas_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.canvases)

    def task_index(self, canvas: str) -> int:
        """The ``task_type`` index of a canvas.

        Raises:
            RequestError: the canvas is not declared.
        """
        try:
            return self.canvas_names.index(canvas)
        except ValueError:
            raise RequestError(
                "canvas", f"unknown canvas {canvas!r}; declared: {', '.join(self.canvas_names)}"
            ) from None

    def fingerprint(self) -> str:
        """A short hash of the contract; two models with equal fingerprints read the same requests."""
        payload = {
            "version": self.version,
            "fields": [(f.name, f.kind, f.vocabulary) for f in self.fields],
            "canvases": [(c.name, c.fields, [(r.field, r.title_of, r.value) for r in c.impute]) for c in self.canvases],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------- requests

    def normalize(self, canvas: str, context: Mapping[str, Any], titles: TitleLookup | None = None) -> dict[str, Any]:
        """Validates one request's context and returns the full unified record.

        Args:
            canvas: the request's canvas.
            context: any subset of the declared fields.
            titles: entity id -> title, for ``title_of`` imputation (None: such rules are skipped).

        Returns:
            A dict with every declared field (None where the canvas does not use it or it is empty)
            plus ``task_type``.

        Raises:
            RequestError: unknown canvas or field, a value of the wrong type, an oversized text.
        """
        spec = self.canvases[self.task_index(canvas)]
        by_name = {f.name: f for f in self.fields}
        record: dict[str, Any] = {name: None for name in self.field_names}
        for name, value in context.items():
            if name not in by_name:
                raise RequestError(name, f"unknown context field; declared: {', '.join(self.field_names)}")
            if value is None or name not in spec.fields:
                continue  # a field this canvas does not use stays at the sentinel
            record[name] = _check_value(by_name[name], value)
        for rule in spec.impute:
            if record[rule.field] not in (None, ""):
                continue
            if rule.value is not None:
                record[rule.field] = rule.value
            elif rule.title_of is not None and titles is not None and record.get(rule.title_of) is not None:
                record[rule.field] = titles(str(record[rule.title_of]))
        record["task_type"] = canvas
        return record

    # ------------------------------------------------------------------------------------- tables

    def apply_to_frame(self, frame: FrameT, catalogue: pl.DataFrame | None = None) -> FrameT:
        """Enforces the contract on a log table with a ``canvas`` column (a DataFrame, or a LazyFrame:
        the plan of the streaming prepare).

        Fields a row's canvas does not use become null (the sentinel); imputation rules fill empty
        fields (``title_of`` joins the catalogue's titles). Missing field columns are added as nulls, so
        every canvas's rows share one shape. The same rules as :meth:`normalize`, vectorized.
        """
        plan = frame.lazy()
        names = plan.collect_schema().names()
        for f in self.fields:
            if f.name not in names:
                dtype = pl.Float64 if f.kind == "numeric" else pl.String
                plan = plan.with_columns(pl.lit(None, dtype=dtype).alias(f.name))
        exprs = []
        for f in self.fields:
            users = [c.name for c in self.canvases if f.name in c.fields]
            exprs.append(pl.when(pl.col("canvas").is_in(users)).then(pl.col(f.name)).otherwise(None).alias(f.name))
        plan = plan.with_columns(exprs)
        titles = None
        if catalogue is not None:
            titles = catalogue.lazy().select(pl.col("entity_id").alias("_ref"), pl.col("title").alias("_title"))
        for canvas in self.canvases:
            for rule in canvas.impute:
                empty = pl.col(rule.field).is_null() | (pl.col(rule.field).cast(pl.String) == "")
                on_canvas = (pl.col("canvas") == canvas.name) & empty
                if rule.value is not None:
                    plan = plan.with_columns(
                        pl.when(on_canvas).then(pl.lit(rule.value)).otherwise(pl.col(rule.field)).alias(rule.field)
                    )
                elif rule.title_of is not None and titles is not None:
                    plan = (
                        plan.join(titles, left_on=rule.title_of, right_on="_ref", how="left", maintain_order="left")
                        .with_columns(
                            pl.when(on_canvas).then(pl.col("_title")).otherwise(pl.col(rule.field)).alias(rule.field)
                        )
                        .drop("_title")
                    )
        plan = plan.with_columns(pl.col("canvas").alias("task_type"))
        return plan if isinstance(frame, pl.LazyFrame) else plan.collect()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fingerprint": self.fingerprint(),
            "sentinels": {"missing": MISSING, "unknown": UNKNOWN},
            "fields": [{"name": f.name, "kind": f.kind, "vocabulary": f.vocabulary} for f in self.fields],
            "canvases": [
                {"name": c.name, "task_type": i, "fields": list(c.fields)} for i, c in enumerate(self.canvases)
            ],
        }


def _check_value(spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "id_list":
        items = value.split("|") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in items):
            raise RequestError(spec.name, "expected a list of ids (or one '|'-separated string)")
        if len(items) > 1000:
            raise RequestError(spec.name, f"{len(items)} ids exceed the limit of 1000")
        return "|".join(str(v) for v in items[-spec.max_tokens :])
    if spec.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(spec.name, f"expected a finite number, got {type(value).__name__}")
        if not math.isfinite(value) or abs(value) > MAX_NUMBER:
            raise RequestError(spec.name, f"expected a finite number within +-{MAX_NUMBER:g}")
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool) and spec.kind in ("id", "categorical"):
        value = str(value)
    if not isinstance(value, str):
        raise RequestError(spec.name, f"expected a string, got {type(value).__name__}")
    if spec.kind == "text" and len(value) > spec.max_length:
        raise RequestError(spec.name, f"text of {len(value)} characters exceeds max_length {spec.max_length}")
    if spec.kind != "text" and len(value) > 256:
        raise RequestError(spec.name, f"value of {len(value)} characters exceeds 256")
    return value
