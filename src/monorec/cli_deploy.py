"""The deployment commands of the ``monorec`` CLI (see :mod:`monorec.cli`).

monorec deploy   VERSION [--catalogue FILE] [--retire-previous]
monorec versions
monorec switch   VERSION
monorec rollback
monorec retire   VERSION
monorec stream publish FILE|-      (JSON lines: {"op": "upsert"|"delete", "entity_id", "revision", ...})
monorec stream status

Every command takes --root DIR (the deployment folder), --registry DIR and --redis URL (a Redis stream as
the change log instead of the embedded one). Commands that change versions own the folder while they run;
``stream publish`` does not, so it can feed a running server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from monorec.errors import ChangeError

__all__ = ["add_deploy_commands", "run_deploy_command"]

COMMANDS = ("deploy", "versions", "switch", "rollback", "retire", "stream")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="runs/deployment", help="deployment folder (control plane, indexes, log)")
    p.add_argument("--registry", default="runs/registry", help="the model registry")
    p.add_argument("--redis", default=None, metavar="URL", help="use a Redis stream as the change log")


def add_deploy_commands(sub: Any) -> None:
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
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            changes.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ChangeError("*", f"line {number}: not valid JSON ({exc})") from None
    log = open_log(args.root, args.redis)
    offsets: list[str] = []
    for start in range(0, len(changes), MAX_PUBLISH_BATCH):  # each batch all-or-nothing, in file order
        offsets += publish_changes(log, changes[start : start + MAX_PUBLISH_BATCH], types)
    print(f"published {len(offsets)} change(s); last offset {offsets[-1] if offsets else '-'}")
    return 0


def run_deploy_command(args: argparse.Namespace) -> int:
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
            print(f"log head {dep.log.head()}")
            for group in dep.log.groups():
                print(f"  group {group:<20} lag {dep.log.lag(group)}")
            print(f"dead letters: {len(dep.control.dead_letters())}")
            for letter in dep.control.dead_letters()[-5:]:
                print(f"  {letter.consumer} @ {letter.log_offset}: {letter.reason}")
    return 0
