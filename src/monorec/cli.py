"""``monorec``: a thin command line over the library.

monorec demo       [--workdir DIR] [--quick] [--retrain]
monorec generate   --out DIR [--users N --items N --requests N --seed S --notify SHARE]
monorec prepare    --data DIR --out DIR [--config FILE] [--streaming]
monorec train      --prepared DIR --out DIR [--canvas NAME ...] [--device cpu|cuda] [--ray auto|ADDRESS --workers N]
monorec evaluate   --run DIR --prepared DIR --out DIR [--split test]
monorec publish    --run DIR --metrics FILE [--registry DIR] [--tolerance T] [--force]
monorec config check FILE [FILE ...]
monorec deploy | versions | switch | rollback | retire | canary | stream | serve   (see monorec.cli_deploy)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from monorec.cli_deploy import COMMANDS as DEPLOY_COMMANDS
from monorec.cli_deploy import DEFAULT_REGISTRY, add_deploy_commands, run_deploy_command
from monorec.cli_options import add_command, add_ray_option
from monorec.config import ProjectConfig
from monorec.devices import resolve_device
from monorec.errors import ConfigError, MonorecError

__all__ = ["main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("monorec")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monorec", description="One pipeline, one model, one API for every canvas.")
    p.add_argument("--version", action="version", version=f"monorec {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    d = add_command(sub, "demo", help="generate a synthetic world and run the whole pipeline on it")
    d.add_argument("--workdir", default="runs/demo", help="where the world, runs, registry and deployment go")
    d.add_argument("--quick", action="store_true", help="a tiny world (seconds; for tests)")
    d.add_argument("--seed", type=int, default=0, help="seed of the world and of training")
    d.add_argument(
        "--retrain",
        action="store_true",
        help="train the next version on the demo's data (the next seed) and publish it, without deploying it",
    )

    g = add_command(sub, "generate", help="write a synthetic world (dataset folder)")
    g.add_argument("--out", required=True, help="the dataset folder to write")
    g.add_argument("--users", type=int, default=1500, help="number of users")
    g.add_argument("--items", type=int, default=1500, help="number of catalogue entities")
    g.add_argument("--requests", type=int, default=12000, help="number of logged requests")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument(
        "--notify", type=float, default=0.0, metavar="SHARE", help="share of requests on a fifth canvas, notify"
    )

    pr = add_command(sub, "prepare", help="labels per canvas, time split, stratified merge")
    pr.add_argument("--data", required=True, help="a dataset folder or a MovieLens folder")
    pr.add_argument("--out", required=True, help="the prepared-data folder to write")
    pr.add_argument(
        "--logs", action="append", default=[], help="another dataset folder whose logs are added (e.g. exported events)"
    )
    pr.add_argument(
        "--config", help="project config (default: the synthetic world's, or MovieLens's for MovieLens data)"
    )
    pr.add_argument(
        "--streaming",
        action="store_true",
        help="logs larger than memory: the same preparation on polars' streaming engine, tables spilled to Parquet",
    )

    t = add_command(sub, "train", help="train the model (or one dedicated model with --canvas)")
    t.add_argument("--prepared", required=True, help="a folder written by prepare")
    t.add_argument("--out", required=True, help="the run folder to write (model bundle)")
    t.add_argument("--config", help="override the config saved with the prepared data")
    t.add_argument("--canvas", action="append", help="train on these canvases only (baseline mode)")
    t.add_argument("--device", help="cpu, cuda or auto (default: the config's train.device)")
    add_ray_option(t, runs="train on Ray Train", shared="the prepared folder")
    t.add_argument("--workers", type=int, default=2, help="with --ray: data-parallel workers, one CPU each")

    e = add_command(sub, "evaluate", help="per-canvas metrics and a report")
    e.add_argument("--run", required=True, help="a run folder written by train")
    e.add_argument("--prepared", required=True, help="the prepared data it was trained on")
    e.add_argument("--out", required=True, help="where metrics.json and the report go")
    e.add_argument("--split", default="test", choices=["valid", "test"], help="the split to evaluate on")

    pb = add_command(sub, "publish", help="gate against the registry's last version and publish an immutable one")
    pb.add_argument("--run", required=True, help="a run folder written by train")
    pb.add_argument("--metrics", required=True, help="metrics.json written by evaluate")
    pb.add_argument("--registry", default=DEFAULT_REGISTRY, help="the model registry ($MONOREC_REGISTRY)")
    pb.add_argument("--tolerance", type=float, help="allowed regression per canvas (default: the config's)")
    pb.add_argument("--force", action="store_true", help="publish even if the gate refuses")
    pb.add_argument(
        "--prepared", help="the candidate's prepared data: the live version is re-measured on it when needed"
    )

    c = add_command(sub, "config", help="config tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    check = add_command(csub, "check", help="report every problem of config files")
    check.add_argument("files", nargs="+", help="TOML config files")
    add_deploy_commands(sub)
    return p


def _config_check(files: Sequence[str]) -> int:
    from monorec.config import check_config

    status = 0
    for f in files:
        problems = check_config(f)
        if problems:
            status = 1
            print(f"{f}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(f"{f}: ok")
    return status


def _run(args: argparse.Namespace) -> int:
    from monorec import pipeline
    from monorec.config import load_config

    if args.command in ("demo", "train", "evaluate", "deploy", "prepare"):
        from monorec.threads import configure_torch_threads

        configure_torch_threads()  # the cores actually free, not every core (MONOREC_TORCH_THREADS overrides)

    if args.command == "config":
        return _config_check(args.files)
    if args.command in DEPLOY_COMMANDS:
        return run_deploy_command(args)
    if args.command == "demo":
        from monorec.demo import run_demo

        if args.retrain:
            from monorec.demo import retrain_demo

            return 0 if retrain_demo(Path(args.workdir), seed=args.seed) is not None else 1
        run_demo(Path(args.workdir), quick=args.quick, seed=args.seed)
        return 0
    if args.command == "generate":
        from monorec.data.world import WorldSpec, write_world

        spec = WorldSpec(
            n_users=args.users, n_items=args.items, n_requests=args.requests, seed=args.seed, notify_share=args.notify
        )
        print(f"wrote {write_world(args.out, spec)}")
        return 0
    if args.command == "prepare":
        from monorec.data.movielens import is_movielens

        default = "movielens" if is_movielens(args.data) else "synthetic"
        config = load_config(args.config or pipeline.default_config(default))
        manifest = pipeline.prepare_stage(config, args.data, args.out, tuple(args.logs), streaming=args.streaming)
        for canvas, counts in manifest["rows"].items():
            print(f"{canvas:>10}: " + "  ".join(f"{s} {n}" for s, n in counts.items()))
        print(f"wrote {args.out}")
        return 0
    if args.command == "train":
        cfg = load_config(args.config) if args.config else None
        if args.device:
            resolve_device(args.device)  # before the data loads: a missing GPU is said at once
        if args.ray:
            return _train_on_ray(args, cfg)
        bundle = pipeline.train_stage(
            args.prepared,
            args.out,
            config=cfg,
            canvases=tuple(args.canvas) if args.canvas else None,
            device=args.device,
        )
        print(
            f"best epoch {bundle.meta['best_epoch'] + 1}, "
            f"validation {bundle.meta['selection']} score {bundle.meta['best_val_score']:.4f}; wrote {args.out}"
        )
        return 0
    if args.command == "evaluate":
        from monorec.evaluation.report import comparison_table

        report = pipeline.evaluate_stage(args.run, args.prepared, args.out, split=args.split)
        print(comparison_table({"model": report}, report["k"]))
        print(f"wrote {args.out}/metrics.json and report.md")
        return 0
    if args.command == "publish":
        version = pipeline.publish_stage(
            args.run, args.metrics, args.registry, tolerance=args.tolerance, force=args.force, prepared=args.prepared
        )
        print(f"published {version} to {args.registry}; not serving yet (monorec deploy {version} serves it)")
        return 0
    raise AssertionError(args.command)


def _train_on_ray(args: argparse.Namespace, cfg: ProjectConfig | None) -> int:
    from monorec.distributed import import_ray, ray_session, train_on_ray
    from monorec.pipeline import config_of

    import_ray()  # Ray missing: said before anything is read
    config = cfg or config_of(args.prepared)
    canvases = tuple(args.canvas) if args.canvas else None
    with ray_session(args.ray, cpus=args.workers):
        bundle = train_on_ray(config, args.prepared, workers=args.workers, canvases=canvases, device=args.device)
    bundle.save(args.out)
    print(
        f"best epoch {bundle.meta['best_epoch'] + 1} on {args.workers} Ray workers, "
        f"validation {bundle.meta['selection']} score {bundle.meta['best_val_score']:.4f}; wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MonorecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
