"""The deployment commands of the ``monorec`` CLI (see :mod:`monorec.cli`).

monorec deploy   VERSION [--catalogue FILE] [--retire-previous] [--ray auto|ADDRESS [--ray-workers N]]
monorec versions
monorec switch   VERSION
monorec rollback
monorec retire   VERSION
monorec stream publish FILE|-      (JSON lines: {"op": "upsert"|"delete", "entity_id", "revision", ...})
monorec stream status
monorec serve    [--env NAME] [--config FILE] [--host H] [--port P] [--workers N]   (the API and the page)
monorec events export --out DIR      (answers + events -> training logs, a dataset folder for prepare)
monorec precompute [--env NAME] [--version V] [--ray auto|ADDRESS]   (precomputed tables: a batch job)

Every command takes --root DIR (the deployment folder; default $MONOREC_ROOT, else the demo's
runs/demo/deployment), --registry DIR (default $MONOREC_REGISTRY, else runs/demo/registry) and --redis URL
(a Redis stream as the change log instead of the embedded one). Commands that change versions own the
folder while they run; ``stream publish`` does not, so it can feed a running server. While a server owns
the folder, ``deploy``, ``versions``, ``switch``, ``rollback``, ``retire`` and ``stream status`` go through
its admin API (token: $MONOREC_ADMIN_TOKEN). Read-only commands never create a folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monorec.cli_options import add_command, add_ray_option
from monorec.cli_precompute import add_precompute_command, run_precompute
from monorec.cli_serve import add_serve_command, run_serve
from monorec.errors import ChangeError, DeployError

__all__ = ["DEFAULT_REGISTRY", "DEFAULT_ROOT", "add_deploy_commands", "run_deploy_command"]

COMMANDS = ("deploy", "versions", "switch", "rollback", "retire", "canary", "stream", "serve", "events", "precompute")

# where `make demo` puts them, so that a new user's next command finds them; the environment overrides
DEFAULT_ROOT = os.environ.get("MONOREC_ROOT", "runs/demo/deployment")
DEFAULT_REGISTRY = os.environ.get("MONOREC_REGISTRY", "runs/demo/registry")
READ_ONLY = ("versions", "stream status", "canary status")


def _folders(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root", default=DEFAULT_ROOT, help="deployment folder: control plane, indexes, log ($MONOREC_ROOT)"
    )
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help="the model registry ($MONOREC_REGISTRY)")


def _common(p: argparse.ArgumentParser) -> None:
    _folders(p)
    p.add_argument("--redis", default=None, metavar="URL", help="use a Redis stream as the change log")


def add_deploy_commands(sub: Any) -> None:
    add_serve_command(sub, _common)
    d = add_command(sub, "deploy", help="stage, validate and switch to a version (resumes an interrupted deploy)")
    d.add_argument("version", help="a published version, e.g. v0002")
    d.add_argument("--catalogue", help="initial catalogue table (Parquet/CSV) when the folder has none yet")
    d.add_argument("--retire-previous", action="store_true", help="retire the old version instead of keeping it")
    add_ray_option(d, runs="bulk-embed on Ray Data", shared="the registry and the folder")
    d.add_argument("--ray-workers", type=int, default=2, help="with --ray: actors encoding the catalogue")
    _common(d)
    v = add_command(sub, "versions", help="deployed versions: state, entities, loader lag")
    _common(v)
    s = add_command(sub, "switch", help="serve a ready or standby version")
    s.add_argument("version", help="a ready or standby version")
    _common(s)
    r = add_command(sub, "rollback", help="serve the previous version again (while it is on standby)")
    _common(r)
    rt = add_command(sub, "retire", help="free a version that does not serve")
    rt.add_argument("version", help="a version that does not serve")
    _common(rt)
    st = add_command(sub, "stream", help="the catalogue change log")
    ssub = st.add_subparsers(dest="stream_command", required=True)
    pub = add_command(ssub, "publish", help="append changes (JSON lines from a file or -)")
    pub.add_argument("file", help="a file of JSON lines, or - for standard input")
    _common(pub)
    status = add_command(ssub, "status", help="consumer groups, lag, dead letters")
    _common(status)

    ca = add_command(sub, "canary", help="put a ready version on canary or shadow trial beside the serving one")
    csub = ca.add_subparsers(dest="canary_command", required=True)
    cs = add_command(csub, "start", help="start a trial of a ready (deployed, not serving) version")
    cs.add_argument("version", help="a ready or standby version")
    cs.add_argument("--share", type=float, default=0.05, help="canary: the share of requests it answers")
    cs.add_argument("--sticky-by", default="user_id", help="canary: the context field a share sticks to")
    cs.add_argument("--shadow", action="store_true", help="score every request beside the serving version instead")
    _common(cs)
    for name, text in (
        ("status", "the trial and, from a server, both versions' comparison per canvas"),
        ("promote", "switch to the version on trial"),
        ("abort", "end the trial: every request goes to the serving version"),
    ):
        _common(add_command(csub, name, help=text))

    ev = add_command(sub, "events", help="users' events and the answers they belong to (the feedback journal)")
    esub = ev.add_subparsers(dest="events_command", required=True)
    export = add_command(esub, "export", help="write answers + events as training logs (a dataset folder)")
    export.add_argument("--out", required=True, help="the dataset folder to write (replaced atomically)")
    _common(export)
    add_precompute_command(sub, _folders)  # reads checkpoints, never the change log: no --redis


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


def _print_stream(status: dict[str, Any]) -> None:
    print(f"log head {status['head']}")
    loaders = status.get("loaders", {})
    for group, lag in status["lag"].items():
        health = loaders.get(group)
        state = ""
        if health is not None and health["running"]:  # a loader of this process (a server's, asked remotely)
            state = "  ok" if health["healthy"] else f"  FAILING: {health['error']}"
        print(f"  group {group:<20} lag {lag}{state}")
    print(f"dead letters: {status['dead_letters']}")
    for letter in status["recent_dead_letters"]:
        print(f"  {letter['consumer']} @ {letter['offset']}: {letter['reason']}")


def _command_name(args: argparse.Namespace) -> str:
    if args.command in ("stream", "canary"):
        return f"{args.command} {getattr(args, args.command + '_command')}"
    return str(args.command)


def _trial(args: argparse.Namespace, call: Callable[[str, dict[str, Any] | None], dict[str, Any]]) -> None:
    """A ``monorec canary`` command through ``call(action, body)`` (the server's API or the folder)."""
    action = args.canary_command
    body = None
    if action == "start":
        mode = "shadow" if args.shadow else "canary"
        body = {"version": args.version, "mode": mode, "share": args.share, "sticky_by": args.sticky_by}
    print(json.dumps(call(action, body), indent=2, default=str))


def _local_trial(dep: Any, action: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """A trial command on the folder itself (no server owns it): the control plane keeps the trial, and the
    next ``monorec serve`` resumes it."""
    if action == "start":
        assert body is not None
        dep.trials.start(body["version"], body["mode"], body["share"], body["sticky_by"])
    elif action == "promote":
        return {"serving": dep.trials.promote()}
    elif action == "abort":
        return {"aborted": dep.trials.abort().version}
    trial = dep.router.trial
    return {"trial": None if trial is None else trial.__dict__, "serving": dep.control.pointer("serving")}


def _require_existing(args: argparse.Namespace) -> None:
    """Read-only commands look at what exists; they never create a deployment or a registry."""
    for path, option, env in ((args.root, "root", "MONOREC_ROOT"), (args.registry, "registry", "MONOREC_REGISTRY")):
        if not Path(path).is_dir():
            raise DeployError(f"no {option} folder at {path}: run `make demo` first, or pass --{option} (or ${env})")


def _remote(args: argparse.Namespace, url: str) -> int:
    """The command through the admin API of the server that owns the folder."""
    from monorec.admin_client import AdminClient

    name = _command_name(args)
    print(f"(the deployment is served by {url}: asking the server)", file=sys.stderr)
    client = AdminClient(url)
    try:
        if name == "versions":
            _print_versions(client.versions())
        elif name == "stream status":
            _print_stream(client.stream_status())
        elif name == "deploy":
            row = client.deploy(args.version)
            print(f"{row['version']} is {row['state']}")
            if args.retire_previous:
                print("note: --retire-previous is not applied through a server; retire the old version by name")
        elif name == "switch":
            client.switch(args.version)
            print(f"{args.version} is serving")
        elif name == "rollback":
            print(f"rolled back: {client.rollback()} is serving")
        elif name == "retire":
            client.retire(args.version)
            print(f"{args.version} is retired")
        elif name.startswith("canary "):
            _trial(args, client.trial)
        else:
            raise AssertionError(name)
    finally:
        client.close()
    return 0


def _export_events(args: argparse.Namespace) -> int:
    """The journal and the current catalogue as a dataset folder; reads only (a server may keep running)."""
    from monorec.feedback import FeedbackJournal, export_logs
    from monorec.registry import Registry
    from monorec.stream.catalogue import CatalogueStore

    _require_existing(args)
    journal_path = Path(args.root) / "feedback.sqlite"
    if not journal_path.exists():
        raise DeployError(f"no feedback journal at {journal_path}: serve the deployment and post events first")
    registry = Registry(args.registry)
    versions = registry.versions()
    if not versions:
        raise DeployError(f"registry {args.registry} has no version")
    config = registry.config(versions[-1].version)
    journal = FeedbackJournal(journal_path)
    try:
        summary = export_logs(journal, CatalogueStore(Path(args.root) / "catalogue.sqlite").frame(), config, args.out)
    finally:
        journal.close()
    print(
        f"wrote {args.out}: {summary['rows']} rows from {summary['requests']} requests over {len(summary['days'])} "
        f"day(s); {summary['events_without_answer']} event(s) named an answer the journal does not hold"
    )
    return 0


def run_deploy_command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return run_serve(args)
    if args.command == "events":
        return _export_events(args)
    if args.command == "precompute":  # reads a snapshot: beside a running server, without owning the folder
        return run_precompute(args)
    if args.command == "stream" and args.stream_command == "publish":
        return _publish(args)
    from monorec.deployment import Deployment, open_log
    from monorec.deployment.ownership import running_server

    if _command_name(args) in READ_ONLY:
        _require_existing(args)
    ray_address = getattr(args, "ray", None)
    if ray_address is not None:
        from monorec.distributed import import_ray

        import_ray()  # Ray missing: say so before anything is read
    url = running_server(args.root)
    if url is not None:
        if ray_address is not None:
            raise DeployError(f"{url} owns {args.root}: --ray deploys from the folder itself; stop the server first")
        return _remote(args, url)
    with Deployment(args.root, args.registry, log=open_log(args.root, args.redis), progress=True) as dep:
        if args.command == "deploy":
            if args.catalogue and dep.catalogue.count() == 0:
                from monorec.data.tables import read_table, validate_catalogue

                config = dep.registry.config(args.version)
                dep.seed_catalogue(validate_catalogue(read_table(args.catalogue), config, args.catalogue))
            dep.open(start_loaders=False)
            if ray_address is None:
                state = dep.deploy(args.version, retire_previous=args.retire_previous)
            else:
                from monorec.distributed import RayBulkEmbedder, ray_session

                scratch = Path(args.root) / "bulk-blocks" / args.version
                embedder = RayBulkEmbedder(args.registry, args.version, scratch, workers=args.ray_workers)
                with ray_session(ray_address, cpus=args.ray_workers):
                    state = dep.deploy(args.version, retire_previous=args.retire_previous, encoder=embedder)
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
            _print_stream(dep.stream_status())
        elif args.command == "canary":
            dep.open(start_loaders=False)
            _trial(args, lambda action, body: _local_trial(dep, action, body))
    return 0
