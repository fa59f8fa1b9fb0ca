"""The deployment commands of the ``monorec`` CLI (see :mod:`monorec.cli`).

monorec deploy   VERSION [--catalogue FILE] [--retire-previous]
monorec versions
monorec switch   VERSION
monorec rollback
monorec retire   VERSION
monorec stream publish FILE|-      (JSON lines: {"op": "upsert"|"delete", "entity_id", "revision", ...})
monorec stream status
monorec serve    [--env NAME] [--config FILE] [--host H] [--port P]   (the HTTP API and the page)

Every command takes --root DIR (the deployment folder), --registry DIR and --redis URL (a Redis stream as
the change log instead of the embedded one). Commands that change versions own the folder while they run;
``stream publish`` does not, so it can feed a running server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from monorec.errors import ChangeError

__all__ = ["add_deploy_commands", "run_deploy_command"]

COMMANDS = ("deploy", "versions", "switch", "rollback", "retire", "stream", "serve")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="runs/deployment", help="deployment folder (control plane, indexes, log)")
    p.add_argument("--registry", default="runs/registry", help="the model registry")
    p.add_argument("--redis", default=None, metavar="URL", help="use a Redis stream as the change log")


def add_deploy_commands(sub: Any) -> None:
    sv = sub.add_parser("serve", help="serve the deployment over HTTP: the API, /metrics and a page to try it")
    sv.add_argument("--env", default="default", help="the serving environment (an [environments.NAME] table)")
    sv.add_argument("--config", default=None, help="environments from this TOML (default: the model's config)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    _common(sv)
    d = sub.add_parser("deploy", help="stage, validate and switch to a version (resumes an interrupted deploy)")
    d.add_argument("version")
    d.add_argument("--catalogue", help="initial catalogue table (Parquet/CSV) when the folder has none yet")
    d.add_argument("--retire-previous", action="store_true", help="retire the old version instead of keeping it")
    _common(d)
    v = sub.add_parser("versions", help="deployed versions: state, entities, loader lag")
    _common(v)
    s = sub.add_parser("switch", help="serve a ready or standby version")
    s.add_argument("version")
    _common(s)
    r = sub.add_parser("rollback", help="serve the previous version again (while it is on standby)")
    _common(r)
    rt = sub.add_parser("retire", help="free a version that does not serve")
    rt.add_argument("version")
    _common(rt)
    st = sub.add_parser("stream", help="the catalogue change log")
    ssub = st.add_subparsers(dest="stream_command", required=True)
    pub = ssub.add_parser("publish", help="append changes (JSON lines from a file or -)")
    pub.add_argument("file")
    _common(pub)
    status = ssub.add_parser("status", help="consumer groups, lag, dead letters")
    _common(status)


def _print_versions(rows: list[dict[str, Any]]) -> None:
    print(f"{'version':<10}{'state':<10}{'entities':>10}{'lag':>8}  error")
    for r in rows:
        entities = "-" if r["entities"] is None else r["entities"]
        lag = "-" if r["lag"] is None else r["lag"]
        print(f"{r['version']:<10}{r['state']:<10}{entities:>10}{lag:>8}  {r['error'] or ''}")


def _publish(args: argparse.Namespace) -> int:
    from monorec.registry import Registry
    from monorec.stream.changes import parse_change
    from monorec.stream.publish import MAX_PUBLISH_BATCH, open_log, publish_changes

    registry = Registry(args.registry)
    versions = registry.versions()
    if not versions:
        print(f"error: registry {args.registry} has no version; publish a model first", file=sys.stderr)
        return 1
    types = registry.config(versions[-1].version).entity_types
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    lines = text.splitlines()
    changes = []
    for number, line in enumerate(lines, start=1):  # every line checked before anything is published
        if not line.strip():
            continue
        try:
            changes.append(parse_change(line, types))
        except ChangeError as exc:
            raise ChangeError(exc.field, f"line {number}: {exc.reason}") from None
    log = open_log(args.root, args.redis)
    offsets: list[str] = []
    for start in range(0, len(changes), MAX_PUBLISH_BATCH):  # each batch all-or-nothing, in file order
        offsets += publish_changes(log, changes[start : start + MAX_PUBLISH_BATCH], types)
    print(f"published {len(offsets)} change(s); last offset {offsets[-1] if offsets else '-'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os
    import secrets

    import torch
    import uvicorn

    from monorec.registry import Registry
    from monorec.serving.app import ServeSettings, create_app, resolve_environment

    token = os.environ.get("MONOREC_ADMIN_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"admin token for this run (set MONOREC_ADMIN_TOKEN to choose one): {token}", flush=True)
    settings = ServeSettings(
        root=Path(args.root),
        registry=Path(args.registry),
        env=args.env,
        config=Path(args.config) if args.config else None,
        redis_url=args.redis,
        admin_token=token,
        read_token=os.environ.get("MONOREC_READ_TOKEN") or None,
    )
    env = resolve_environment(settings, Registry(args.registry))  # an unknown name fails before start-up
    # each worker thread runs whole requests: intra-op threads beyond cores / workers only contend
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.worker_threads))
    print(f"serving environment {args.env!r} on http://{args.host}:{args.port}/ (the page; API docs at /docs)")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def run_deploy_command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "stream" and args.stream_command == "publish":
        return _publish(args)
    from monorec.deploy import Deployment, open_log

    with Deployment(args.root, args.registry, log=open_log(args.root, args.redis), progress=True) as dep:
        if args.command == "deploy":
            if args.catalogue and dep.catalogue.count() == 0:
                from monorec.data.tables import read_table, validate_catalogue

                config = dep.registry.config(args.version)
                dep.seed_catalogue(validate_catalogue(read_table(args.catalogue), config, args.catalogue))
            dep.open(start_loaders=False)
            state = dep.deploy(args.version, retire_previous=args.retire_previous)
            print(f"{state.version} is {state.state}")
        elif args.command == "switch":
            dep.open(start_loaders=False)
            dep.switch(args.version)
            print(f"{args.version} is serving")
        elif args.command == "rollback":
            dep.open(start_loaders=False)
            print(f"rolled back: {dep.rollback()} is serving")
        elif args.command == "retire":
            dep.retire(args.version)
            print(f"{args.version} is retired")
        elif args.command == "versions":
            _print_versions(dep.status())
        elif args.command == "stream":
            status = dep.stream_status()
            print(f"log head {status['head']}")
            for group, lag in status["lag"].items():
                print(f"  group {group:<20} lag {lag}")
            print(f"dead letters: {status['dead_letters']}")
            for letter in status["recent_dead_letters"]:
                print(f"  {letter['consumer']} @ {letter['offset']}: {letter['reason']}")
    return 0
