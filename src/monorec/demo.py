"""``monorec demo``: the whole pipeline on the synthetic world, ending with a per-canvas table.

generate -> prepare -> train the consolidated model and one dedicated model per canvas -> evaluate all
on the same test requests (plus popularity, co-occurrence and BM25 baselines) -> report -> release gate
(consolidated vs separate) -> publish an immutable version -> deploy it with the embedding server
(bulk-embedded index, version pinning) and answer one request per canvas. Each stage prints its time.

``monorec demo --retrain`` then trains the next version on the same prepared data (the next seed),
evaluates and publishes it without deploying it: the second version the README's deploy, switch and
rollback commands work with.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from monorec.config import load_config
from monorec.data.prepared import PreparedData
from monorec.data.world import WorldSpec, write_world
from monorec.errors import GateError
from monorec.evaluation.gate import compare_reports
from monorec.evaluation.report import comparison_table, write_report
from monorec.pipeline import compare_models, default_config, prepare_stage, write_comparison
from monorec.registry import Registry
from monorec.stream.changes import UserChange
from monorec.users.seed import user_states

__all__ = ["deploy_and_ask", "retrain_demo", "run_demo"]

SAMPLE_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("home", {"user_id": "u00001", "country": "US"}),
    ("related", {"source_item_id": "m00001"}),
    ("search", {"query": "space robot"}),
    ("browse", {"category": "comedy"}),
]

QUICK_WORLD = WorldSpec(n_users=150, n_items=200, n_requests=1500, n_bots=1)


class _Stages:
    """Prints each stage's header and, when the next one starts, how long the previous one took."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self._last = time.perf_counter()

    def next(self, title: str) -> None:
        self._close()
        self.done += 1
        print(f"[{self.done}/{self.total}] {title}", flush=True)

    def _close(self) -> None:
        now = time.perf_counter()
        if self.done:
            print(f"      ({now - self._last:.1f}s)", flush=True)
        self._last = now

    def finish(self) -> None:
        self._close()
        print(f"done in {time.perf_counter() - self.started:.0f}s")


def run_demo(workdir: Path, *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict[str, object]:
    stages = _Stages(6)
    config = load_config(default_config("synthetic"))
    spec = QUICK_WORLD if quick else WorldSpec()
    spec = WorldSpec(**{**spec.__dict__, "seed": seed})
    if quick:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2, val_requests=50))
    stages.next(f"generating a world: {spec.n_users} users, {spec.n_items} entities, {spec.n_requests} requests")
    data = write_world(workdir / "world", spec)
    stages.next("preparing labels per canvas, time split, stratified merge")
    prepare_stage(config, data, workdir / "prepared")
    prepared = PreparedData.load(workdir / "prepared")
    for canvas, counts in prepared.manifest["rows"].items():
        print(f"      {canvas:>8}: " + "  ".join(f"{s} {n:>6}" for s, n in counts.items()))
    stages.next("training the consolidated model and one dedicated model per canvas")
    bundle, results = compare_models(config, prepared, progress=progress)
    stages.next("evaluating on the test split (same requests for every model)")
    report = results["consolidated"]
    write_report(
        workdir / "report",
        report,
        comparisons={k: v for k, v in results.items() if k != "consolidated"},
        history=bundle.meta.get("history"),
        name="consolidated",
    )
    write_comparison(workdir / "report" / "comparison.json", results)
    gate = compare_reports(report, results["separate"], tolerance=config.evaluate.gate_tolerance)
    print()
    print(comparison_table(results, config.evaluate.k))
    print()
    print(
        f"release gate (consolidated vs separate, tolerance {config.evaluate.gate_tolerance}): "
        + ("PASSED" if gate.passed else "REFUSED: " + "; ".join(gate.regressions))
    )
    stages.next("publishing")
    version = None
    if gate.passed:
        try:  # the registry gates the candidate again, against the live version if there is one
            version = Registry(workdir / "registry").publish(bundle, report)
            print(f"      published {version} to {workdir / 'registry'}; deploying it next")
        except GateError as exc:
            print(f"      not published: {exc}")
    else:
        print("      not published: the consolidated model regresses a canvas against the dedicated models")
    print(f"      report: {workdir / 'report' / 'report.md'}")
    if version is not None:
        stages.next(f"deploying {version} with the embedding server (bulk-embedded index, pinned requests)")
        rows = pl.concat(list(prepared.canvases.values()), how="diagonal_relaxed")
        users = user_states(rows, config)  # each user's latest profile and history: the users table's start
        deploy_and_ask(workdir, version, data / "catalogue.parquet", users=users, progress=progress)
    stages.finish()
    return {"version": version, "results": results, "gate": gate.passed}


def deploy_and_ask(
    workdir: Path, version: str, catalogue: Path, *, users: Sequence[UserChange] = (), progress: bool = True
) -> None:
    """Deploys ``version`` into ``workdir/deployment`` (seeding its catalogue and users when new) and prints
    one answer per canvas."""
    from monorec.data.tables import read_table, validate_catalogue
    from monorec.deployment import Deployment

    with Deployment(workdir / "deployment", workdir / "registry", progress=progress) as dep:
        if dep.catalogue.count() == 0:
            config = dep.registry.config(version)
            dep.seed_catalogue(validate_catalogue(read_table(catalogue), config, str(catalogue)))
            dep.seed_users(users)
        dep.open()
        dep.deploy(version)  # the version it replaces (a demo run again) stays on standby for a rollback
        from monorec.serving.engine import ServingEngine
        from monorec.serving.messages import RecommendRequest

        engine = ServingEngine(dep, dep.registry.config(version).environment("default"))
        try:
            for canvas, context in SAMPLE_REQUESTS:  # through the serving engine, as the API answers them
                r = engine.recommend(RecommendRequest(canvas=canvas, context=context, k=3))
                shown = "; ".join(f"{i.title or i.entity_id} ({i.score or 0:.2f})" for i in r.items)
                print(f"      {canvas:>8} {context} -> {r.version} in {r.took_ms:.1f} ms: {shown}")
        finally:
            engine.close()
        where = f"--root {workdir / 'deployment'} --registry {workdir / 'registry'}"
        print(f"      try: .venv/bin/monorec versions {where}")
    serve = f".venv/bin/monorec serve --root {workdir / 'deployment'} --registry {workdir / 'registry'}"
    print(f"\nTry every canvas in the browser: {serve}   (or `make serve`), then open http://127.0.0.1:8000/")


def retrain_demo(workdir: Path, *, seed: int = 0, progress: bool = True) -> str | None:
    """Trains the next version on the demo's prepared data (seed + the number of published versions),
    evaluates it, and publishes it through the registry's gate WITHOUT deploying it. Returns the new
    version, or None when the gate refused it (the reason is printed).

    Raises:
        DeployError: the demo has not run in ``workdir`` yet.
    """
    from monorec.data.prepared import PreparedData
    from monorec.errors import DeployError
    from monorec.evaluation.evaluate import evaluate_bundle
    from monorec.pipeline import config_of
    from monorec.train import train

    prepared_dir, registry_dir = workdir / "prepared", workdir / "registry"
    if not (prepared_dir / "manifest.json").exists() or not registry_dir.is_dir():
        raise DeployError(f"no demo in {workdir}: run `make demo` (or monorec demo --workdir {workdir}) first")
    registry = Registry(registry_dir)
    stages = _Stages(3)
    next_seed = seed + len(registry.versions())
    config = config_of(prepared_dir)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=next_seed))
    stages.next(f"training the next version on {prepared_dir} (seed {next_seed})")
    prepared = PreparedData.load(prepared_dir)
    bundle = train(config, prepared, progress=progress)
    stages.next("evaluating on the test split")
    report = evaluate_bundle(bundle, prepared, "test")
    stages.next("publishing through the release gate (against the registry's last version)")
    try:
        version = registry.publish(bundle, report)
    except GateError as exc:
        print(f"      not published: {exc}")
        stages.finish()
        return None
    print(f"      published {version} to {registry_dir}; not serving yet: `monorec deploy {version}` serves it")
    stages.finish()
    return version
