"""``monorec precompute``: the batch job that scores an environment's precomputed tables (see
:mod:`monorec.serving.precomputed`).

monorec precompute [--env NAME] [--config FILE] [--version V] [--ray auto|ADDRESS [--ray-workers N]]

It reads a version frozen at the owner's newest checkpoint (the folder may be served meanwhile: the job
writes only ``precomputed/ENV/VERSION/``, whole or not at all) and scores every key of the environment's
tables through the online model path, in this process or on Ray Data. Servers of an environment with
``precompute_by = "job"`` load the table of the version they serve within a second.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monorec.cli_options import add_command, add_ray_option

__all__ = ["add_precompute_command", "run_precompute"]


def add_precompute_command(sub: Any, folders: Callable[[argparse.ArgumentParser], None]) -> None:
    """The subcommand; ``folders`` adds the deployment commands' --root and --registry."""
    p = add_command(sub, "precompute", help="score an environment's precomputed tables (a batch job; Ray optional)")
    p.add_argument("--env", default="default", help="the environment whose tables are scored")
    p.add_argument("--config", default=None, help="environments from this TOML (default: the model's config)")
    p.add_argument("--version", default=None, help="the version that scores (default: the serving one)")
    add_ray_option(p, runs="score", shared="the registry and the folder")
    p.add_argument("--ray-workers", type=int, default=2, help="with --ray: actors scoring keys")
    folders(p)


def run_precompute(args: argparse.Namespace) -> int:
    """Scores and writes the tables; prints where they went.

    Raises:
        ConfigError: an unknown environment, one without ``precompute`` tables, or --ray without Ray.
        DeployError: no deployment folder, or the version is not live.
    """
    from monorec.deployment.snapshot import VersionSnapshot, live_version
    from monorec.errors import ConfigError
    from monorec.registry import Registry
    from monorec.serving.model_path import ModelPath
    from monorec.serving.precomputed import precompute_keys, score_tables, tables_path, write_tables
    from monorec.threads import configure_torch_threads

    if args.ray is not None:
        from monorec.distributed import import_ray

        import_ray()  # Ray missing: say so before anything is read
    registry = Registry(args.registry)
    env = registry.environment(args.env, args.config)
    if not env.precompute:
        raise ConfigError(f"environments.{env.name}.precompute", ["no canvas -> key field: nothing to score"])
    started = time.monotonic()
    name = live_version(Path(args.root), args.version)
    path = tables_path(args.root, env.name, name)
    manifest: dict[str, Any] = {"version": name, "env": env.name, "k": env.precompute_k}
    if args.ray is None:
        configure_torch_threads()
        with VersionSnapshot(args.root, registry, name) as snapshot:
            keys = precompute_keys(snapshot.version.bundle.featurizer, env)
            manifest |= _described(keys, "process", snapshot.offset)
            rows = score_tables(ModelPath(snapshot, env), snapshot.version, keys)
            written = write_tables(path, rows, manifest=manifest)
    else:
        from monorec.distributed import RayTableScorer, ray_session

        # the driver needs only the keys; each actor opens the version itself
        keys = precompute_keys(registry.load(name).featurizer, env)
        manifest |= _described(keys, "ray", None)
        scratch = Path(args.root) / "precompute-blocks" / env.name
        scorer = RayTableScorer(
            args.root, args.registry, name, env.name, scratch, config=args.config, workers=args.ray_workers
        )
        with ray_session(args.ray, cpus=args.ray_workers):
            written = write_tables(path, scorer.rows(keys), manifest=manifest)
    print(f"{written} keys of {name} scored for {env.name!r} in {time.monotonic() - started:.1f} s -> {path}")
    return 0


def _described(keys: list[Any], scored_by: str, offset: str | None) -> dict[str, Any]:
    """What the manifest says of a job's tables besides version, environment and k."""
    return {
        "keys": {canvas: len(values) for canvas, _, values in keys},
        "scored_by": scored_by,
        "checkpoint_offset": offset,  # the last log entry the scoring snapshot held (per actor on Ray)
        "scored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
