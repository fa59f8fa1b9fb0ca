"""``monorec serve``: the API, ``/metrics`` and the page over HTTP, in one process or as an owner with
replicas (see :mod:`monorec.serving.workers`).

monorec serve [--env NAME] [--config FILE] [--host H] [--port P] [--workers N] [--replica NAME --owner-url URL]

One process by default. With ``--workers N`` the owner (lifecycle, loaders, admin) listens on a private
port of 127.0.0.1 and N replica processes share the public port; ``--replica`` runs one replica of an owner
on another host. The admin token is $MONOREC_ADMIN_TOKEN, else one made up and printed for this run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monorec.cli_options import add_command
from monorec.errors import DeployError

__all__ = ["add_serve_command", "run_serve"]


def add_serve_command(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The subcommand; ``common`` adds the deployment commands' --root, --registry and --redis."""
    sv = add_command(sub, "serve", help="serve the deployment over HTTP: the API, /metrics and a page to try it")
    sv.add_argument("--env", default="default", help="the serving environment (an [environments.NAME] table)")
    sv.add_argument("--config", default=None, help="environments from this TOML (default: the model's config)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument(
        "--workers",
        type=int,
        default=0,
        help="serving replicas (processes sharing the port); the owner then runs the lifecycle on a private port",
    )
    sv.add_argument(
        "--replica", default=None, metavar="NAME", help="serve as one replica of the folder's owner (another host)"
    )
    sv.add_argument("--owner-url", default=None, help="with --replica: where the owner's API listens")
    common(sv)


def run_serve(args: argparse.Namespace) -> int:
    """Serves until stopped (one process, an owner with ``--workers`` replicas, or one ``--replica``).

    Raises:
        DeployError: --replica without --owner-url, or a negative --workers.
        ConfigError: an unknown environment (before anything starts).
    """
    import secrets

    import uvicorn

    from monorec.admin_client import TOKEN_ENV
    from monorec.registry import Registry
    from monorec.serving.app import ServeSettings, create_app, resolve_environment
    from monorec.threads import configure_torch_threads, set_gil_switch_interval

    token = os.environ.get(TOKEN_ENV)
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"admin token for this run (set MONOREC_ADMIN_TOKEN to choose one): {token}", flush=True)
    if args.replica and not args.owner_url:
        raise DeployError("--replica needs --owner-url (where the owner takes admin calls, writes and events)")
    if args.workers < 0:
        raise DeployError(f"--workers must be 0 (one process) or more, got {args.workers}")
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    owner_port = _free_port() if args.workers and not args.replica else args.port
    settings = ServeSettings(
        root=Path(args.root),
        registry=Path(args.registry),
        env=args.env,
        config=Path(args.config) if args.config else None,
        redis_url=args.redis,
        admin_token=token,
        read_token=os.environ.get("MONOREC_READ_TOKEN") or None,
        public_url=f"http://{local if not args.workers else '127.0.0.1'}:{owner_port}",
        replica=args.replica,
        owner_url=args.owner_url,
    )
    env = resolve_environment(settings, Registry(args.registry))  # an unknown name fails before start-up
    # each worker thread runs whole requests: intra-op threads beyond free cores / workers only contend
    configure_torch_threads(per_worker=env.worker_threads * max(1, args.workers))
    set_gil_switch_interval(env.gil_switch_interval_ms)  # requests vs the loaders' Python in one process
    if args.replica:  # one of an owner's replicas: takes connections on the shared port once it is loaded
        from monorec.serving.workers import reuseport_socket

        sock = reuseport_socket(args.host, args.port)
        uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning")).run(sockets=[sock])
        return 0
    print(f"serving environment {args.env!r} on http://{args.host}:{args.port}/ (the page; API docs at /docs)")
    if not args.workers:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
        return 0
    return _serve_with_replicas(args, settings, token, owner_port)


def _serve_with_replicas(args: argparse.Namespace, settings: Any, token: str, owner_port: int) -> int:
    """The owner on 127.0.0.1:``owner_port`` (lifecycle, loaders, admin), ``args.workers`` replicas on the
    public port, started once the owner has opened the folder (see :mod:`monorec.serving.workers`)."""
    import asyncio
    import threading
    import time

    import uvicorn

    from monorec.admin_client import TOKEN_ENV
    from monorec.serving.app import create_app
    from monorec.serving.workers import ReplicaSupervisor, replica_command

    argv = ["serve", "--root", args.root, "--registry", args.registry, "--env", args.env, "--host", args.host]
    argv += ["--port", str(args.port), "--workers", str(args.workers), "--owner-url", settings.public_url]
    argv += ["--config", args.config] if args.config else []
    argv += ["--redis", args.redis] if args.redis else []
    supervisor = ReplicaSupervisor(args.workers, replica_command(argv), env={TOKEN_ENV: token})

    class OwnerServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            # uvicorn re-raises the stopping signal once run() is done, which would end this process before
            # any later line: the replicas are stopped here, before the owner lets its folder go
            await asyncio.to_thread(supervisor.stop)
            await super().shutdown(sockets)

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=owner_port, log_level="warning")
    server = OwnerServer(config)

    def start_replicas() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            supervisor.start()
            print(f"owner on {settings.public_url}; replicas {', '.join(supervisor.names)} on port {args.port}")

    threading.Thread(target=start_replicas, name="start-replicas", daemon=True).start()
    try:
        server.run()
    finally:
        supervisor.stop()  # again: a no-op after a shutdown; needed when the owner failed to start
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
