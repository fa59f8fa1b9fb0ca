"""``monorec demo``: the whole pipeline on the synthetic world, ending with a per-canvas table.

generate -> prepare -> train the consolidated model and one dedicated model per canvas -> evaluate all
on the same test requests (plus popularity, co-occurrence and BM25 baselines) -> report -> release gate
(consolidated vs separate) -> publish an immutable version -> deploy it with the embedding server
(bulk-embedded index, version pinning) and answer one request per canvas.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from monorec.config import load_config
from monorec.data.world import WorldSpec, write_world
from monorec.errors import GateError
from monorec.evaluation.gate import compare_reports
from monorec.evaluation.report import comparison_table, write_report
from monorec.pipeline import compare_models, default_config, prepare_stage, write_comparison
from monorec.registry import Registry

__all__ = ["deploy_and_ask", "run_demo"]

SAMPLE_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("home", {"user_id": "u00001", "country": "US"}),
    ("related", {"source_item_id": "m00001"}),
    ("search", {"query": "space robot"}),
    ("browse", {"category": "comedy"}),
]

QUICK_WORLD = WorldSpec(n_users=150, n_items=200, n_requests=1500, n_bots=1)


def run_demo(workdir: Path, *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict[str, object]:
    started = time.perf_counter()
    config = load_config(default_config("synthetic"))
    spec = QUICK_WORLD if quick else WorldSpec()
    spec = WorldSpec(**{**spec.__dict__, "seed": seed})
    if quick:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2, val_requests=50))
    print(
        f"[1/5] generating a synthetic world: {spec.n_users} users, {spec.n_items} entities, {spec.n_requests} requests"
    )
    data = write_world(workdir / "world", spec)
    print("[2/6] preparing labels per canvas, time split, stratified merge")
    prepared = prepare_stage(config, data, workdir / "prepared")
    for canvas, counts in prepared.manifest["rows"].items():
        print(f"      {canvas:>8}: " + "  ".join(f"{s} {n:>6}" for s, n in counts.items()))
    print("[3/6] training the consolidated model and one dedicated model per canvas")
    bundle, results = compare_models(config, prepared, progress=progress)
    print("[4/6] evaluating on the test split (same requests for every model)")
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
    print("[5/6] publishing")
    version = None
    if gate.passed:
        try:  # the registry gates the candidate again, against the live version if there is one
            version = Registry(workdir / "registry").publish(bundle, report)
            print(f"      published {version} to {workdir / 'registry'} (live)")
        except GateError as exc:
            print(f"      not published: {exc}")
    else:
        print("      not published: the consolidated model regresses a canvas against the dedicated models")
    print(f"      report: {workdir / 'report' / 'report.md'}")
    if version is not None:
        deploy_and_ask(workdir, version, data / "catalogue.parquet", progress=progress)
    print(f"done in {time.perf_counter() - started:.0f}s")
    return {"version": version, "results": results, "gate": gate.passed}


def deploy_and_ask(workdir: Path, version: str, catalogue: Path, *, progress: bool = True) -> None:
    """Deploys ``version`` into ``workdir/deployment`` and prints one answer per canvas."""
    from monorec.data.tables import read_table, validate_catalogue
    from monorec.deploy import Deployment

    print(f"[6/6] deploying {version} with the embedding server (bulk-embedded index, pinned requests)")
    with Deployment(workdir / "deployment", workdir / "registry", progress=progress) as dep:
        if dep.catalogue.count() == 0:
            config = dep.registry.config(version)
            dep.seed_catalogue(validate_catalogue(read_table(catalogue), config, str(catalogue)))
        dep.open()
        dep.deploy(version, retire_previous=True)
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
        print(f"      try: monorec versions --root {workdir / 'deployment'} --registry {workdir / 'registry'}")
    serve = f"monorec serve --root {workdir / 'deployment'} --registry {workdir / 'registry'}"
    print(f"\nTry every canvas in the browser: {serve}   (or `make serve`), then open http://127.0.0.1:8000/")
