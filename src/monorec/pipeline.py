"""The offline pipeline's stages as functions over directories; the CLI, the demo and the benchmarks
call these. ``logs -> prepare (labels, split, merge) -> train -> evaluate -> publish``."""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from monorec.artifacts import read_json, write_json
from monorec.bundle import ModelBundle
from monorec.config import ProjectConfig, parse_config
from monorec.data.movielens import is_movielens, read_movielens
from monorec.data.prepared import PreparedData, prepare, prepare_streaming
from monorec.data.tables import load_dataset, log_files, read_catalogue, validate_catalogue, validate_logs
from monorec.errors import DataError
from monorec.evaluation.evaluate import evaluate_bundle, evaluate_recommender, request_sets
from monorec.evaluation.recommenders import (
    BM25Recommender,
    CategoryPopularityRecommender,
    CooccurrenceRecommender,
    PopularityRecommender,
)
from monorec.evaluation.report import write_report
from monorec.registry import Registry
from monorec.train import train

__all__ = [
    "compare_models",
    "dedicated_config",
    "default_config",
    "evaluate_stage",
    "load_input",
    "prepare_stage",
    "publish_stage",
    "train_stage",
]


def default_config(name: str = "synthetic") -> Path:
    """Path of a config shipped with monorec (``synthetic`` or ``movielens``)."""
    return Path(str(importlib.resources.files("monorec") / "configs" / f"{name}.toml"))


def load_input(config: ProjectConfig, data: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(catalogue, logs) from a dataset folder or a MovieLens folder, validated against the config."""
    if is_movielens(data):
        catalogue, logs = read_movielens(data)
        return validate_catalogue(catalogue, config, str(data)), validate_logs(logs, config, str(data))
    return load_dataset(data, config)


def prepare_stage(
    config: ProjectConfig,
    data: str | Path,
    out: str | Path,
    extra_logs: tuple[str | Path, ...] = (),
    *,
    streaming: bool = False,
) -> dict[str, Any]:
    """Prepares ``data`` (with the logs of each ``extra_logs`` dataset folder appended, e.g. the feedback
    journal exported by ``monorec events export``: the loop back to training) into ``out``.

    Args:
        streaming: run the same plan on polars' streaming engine over the log files (logs larger than
            memory; a dataset folder, not MovieLens's CSV files).

    Returns:
        The prepared data's manifest.

    Raises:
        DataError: ``streaming`` with a MovieLens folder, or a problem in the data.
    """
    inputs = {"data": str(data), **({"logs": [str(f) for f in extra_logs]} if extra_logs else {})}
    if streaming:
        if is_movielens(data):
            raise DataError(
                str(data), "streaming reads a dataset folder (catalogue + logs/*.parquet), not MovieLens's files"
            )
        files = [f for folder in (data, *extra_logs) for f in log_files(folder)]
        prepare_streaming(config, read_catalogue(data, config), files, out, inputs=inputs)
        return read_json(Path(out) / "manifest.json")  # just written and hashed: not read back whole
    catalogue, logs = load_input(config, data)
    if extra_logs:
        more = [load_dataset(folder, config)[1] for folder in extra_logs]
        logs = pl.concat([logs, *more], how="diagonal_relaxed")
    prepared = prepare(config, catalogue, logs, inputs=inputs)
    prepared.manifest["config_dict"] = config.to_dict()
    prepared.save(out)
    return prepared.manifest


def config_of(prepared_dir: str | Path) -> ProjectConfig:
    """The config a prepared-data directory was made with."""
    return parse_config(read_json(Path(prepared_dir) / "manifest.json")["config_dict"], str(prepared_dir))


def train_stage(
    prepared_dir: str | Path,
    out: str | Path,
    *,
    config: ProjectConfig | None = None,
    canvases: tuple[str, ...] | None = None,
    progress: bool = True,
    device: str | None = None,
) -> ModelBundle:
    prepared = PreparedData.open(prepared_dir)
    cfg = config or config_of(prepared_dir)
    out = Path(out)
    bundle = train(
        cfg,
        prepared,
        canvases=canvases,
        progress=progress,
        device=device,
        checkpoint_dir=out.with_name(f"{out.name}.checkpoints"),
    )
    bundle.save(out)
    return bundle


def evaluate_stage(
    run_dir: str | Path, prepared_dir: str | Path, out: str | Path, *, split: str = "test"
) -> dict[str, Any]:
    bundle = ModelBundle.load(run_dir)
    prepared = PreparedData.open(prepared_dir)
    report = evaluate_bundle(bundle, prepared, split)
    write_report(out, report, history=bundle.meta.get("history"))
    return report


def publish_stage(
    run_dir: str | Path,
    metrics: str | Path,
    registry: str | Path,
    *,
    tolerance: float | None = None,
    force: bool = False,
    prepared: str | Path | None = None,
) -> str:
    """Publishes a trained run through the registry's gate. With ``prepared`` (the data the candidate was
    evaluated on), the live version is measured again on the same requests when its own metrics were
    measured on others (a retrain on newer logs): the gate then compares like with like.

    Raises:
        NotComparable: the metrics are not comparable with the live version's, and no ``prepared`` is given.
        GateError: a canvas regresses significantly.
    """
    report = read_json(metrics)
    report.pop("comparisons", None)  # the other models' reports and the paired differences stay beside it
    report.pop("differences", None)
    reg = Registry(registry)
    baseline = None
    live = reg.live()
    if prepared is not None and live is not None and not reg.comparable(report, reg.metrics(live)):
        baseline = evaluate_bundle(reg.load(live), PreparedData.load(prepared), str(report.get("split", "test")))
    return reg.publish(ModelBundle.load(run_dir), report, tolerance=tolerance, force=force, baseline=baseline)


MAX_DEDICATED_EPOCHS = 60


def dedicated_config(config: ProjectConfig, prepared: PreparedData, canvas: str) -> ProjectConfig:
    """The training budget of a dedicated model: as many gradient steps as the consolidated model may take
    (its epochs over ALL merged rows), spread over the canvas's own rows, so that early stopping on its own
    validation requests, not a budget sized for another model, decides when it stops. Without this a small
    canvas's model got ~30x fewer steps, and "consolidated >= separate" was partly an artefact."""
    mixture = prepared.manifest.get("mixture", {})
    total = sum(int(m["rows"]) for m in mixture.values())
    rows = int(mixture.get(canvas, {}).get("rows", 0))
    t = config.train
    if t.max_train_rows:  # both read at most this many rows per epoch
        total, rows = min(total, t.max_train_rows), min(rows, t.max_train_rows)
    if rows == 0 or total <= rows:
        return config
    epochs = min(MAX_DEDICATED_EPOCHS, math.ceil(t.epochs * total / rows))
    return dataclasses.replace(config, train=dataclasses.replace(t, epochs=max(t.epochs, epochs)))


def compare_models(
    config: ProjectConfig, prepared: PreparedData, *, split: str = "test", progress: bool = True, baselines: bool = True
) -> tuple[ModelBundle, dict[str, dict[str, Any]]]:
    """Consolidated model vs one dedicated model per canvas (same code, same rows per canvas) vs baselines,
    all on the same evaluation requests.

    Returns:
        (the consolidated bundle, model name -> report). The ``separate`` report gathers each canvas's
        dedicated model on that canvas.
    """
    k = config.evaluate.k
    reqs = request_sets(config, prepared, split)
    consolidated = train(config, prepared, progress=progress)
    results: dict[str, dict[str, Any]] = {"consolidated": evaluate_bundle(consolidated, prepared, split, reqs)}
    results["consolidated"]["kept_epoch"] = kept_epoch(consolidated)
    separate: dict[str, Any] = {}
    for c in config.canvas_names:
        if c in prepared.empty_canvases:  # no rows to train a dedicated model on: reported, not compared
            separate[c] = {f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan"), "requests": 0, "empty": True}
            continue
        budget = dedicated_config(config, prepared, c)
        dedicated = train(budget, prepared, canvases=(c,), progress=progress)
        separate[c] = evaluate_bundle(dedicated, prepared, split, {c: reqs[c]})["canvases"][c]
        separate[c].update(kept_epoch=kept_epoch(dedicated), epochs=budget.train.epochs)
    results["separate"] = {"split": split, "k": k, "canvases": separate}
    if baselines:
        all_pos = prepared.responses("train")
        pop = {}
        for spec in config.canvases:
            rows = all_pos.filter(pl.col("canvas") == spec.name)
            pop[spec.name] = evaluate_recommender(
                PopularityRecommender(rows, prepared.catalogue), {spec.name: reqs[spec.name]}, k
            )[spec.name]
        results["popularity"] = {"split": split, "k": k, "canvases": pop}
        # popularity over every canvas's responses, on every canvas (a per-canvas count can be the weaker one)
        overall = PopularityRecommender(all_pos, prepared.catalogue)
        results["popularity_global"] = {"split": split, "k": k, "canvases": evaluate_recommender(overall, reqs, k)}
        catalogue = prepared.catalogue
        specialised: list[tuple[str, str, str, Callable[[], Any]]] = [  # (name, canvas, field it reads, make)
            ("category_popularity", "browse", "category", lambda: CategoryPopularityRecommender(all_pos, catalogue)),
            ("cooccurrence", "related", "source_item_id", lambda: CooccurrenceRecommender(all_pos, catalogue)),
            ("bm25", "search", "query", lambda: BM25Recommender(catalogue, all_pos)),
        ]
        for name, canvas, field, make in specialised:
            if canvas in reqs and field in reqs[canvas].contexts.columns:
                scores = evaluate_recommender(make(), {canvas: reqs[canvas]}, k)
                results[name] = {"split": split, "k": k, "canvases": scores}
    return consolidated, results


def kept_epoch(bundle: ModelBundle) -> int:
    """The epoch (1-based) whose weights a trained bundle kept: what early stopping chose."""
    return int(bundle.meta.get("best_epoch", -1)) + 1


def write_comparison(out: str | Path, results: dict[str, dict[str, Any]]) -> None:
    """The comparison as JSON ``{"canvases": {canvas: {model: {"recall@k", "ndcg@k"}}}}``."""
    k = next(iter(results.values()))["k"]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for model, report in results.items():
        for canvas, m in report["canvases"].items():
            table.setdefault(canvas, {})[model] = {f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"]}
    write_json(out, {"k": k, "canvases": table})
