"""``monorec serve --workers N``: one owner process and N serving replicas on one host (issue 13).

    clients ──> host:port  (SO_REUSEPORT: the kernel spreads connections over the replicas)
                  ├── replica r0  (own process, own GIL: loads checkpoints, follows the log and the control plane)
                  ├── replica r1
                  └── ...         admin calls, writes and events ──> the owner (127.0.0.1, a private port)
    owner: lifecycle, loaders, checkpoints, the catalogue store; announced in the folder for the CLI

Replicas are started as new interpreters (``python -m monorec serve --replica NAME``), never forked from a
process that has started torch or OpenMP threads. The supervisor restarts a replica that dies (kill -9
included); the others keep answering meanwhile, and the restarted one loads the newest checkpoints and
replays the log from there before it takes connections.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["ReplicaSupervisor", "replica_command", "reuseport_socket"]

_log = logging.getLogger(__name__)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other processes may bind too (SO_REUSEPORT): the kernel
    hands each new connection to one of them.

    Raises:
        OSError: the platform has no SO_REUSEPORT, or the address is taken by a process without it.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("serving replicas need SO_REUSEPORT (Linux, BSD, macOS)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class ReplicaSupervisor:
    """Starts ``count`` replica processes from ``command(name)`` and restarts any that exits until
    :meth:`stop`; a replica that dies again within ``min_uptime_s`` waits ``backoff_s`` (doubling, up to 30 s)
    before its next start, so a replica that cannot start does not spin."""

    def __init__(
        self,
        count: int,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        min_uptime_s: float = 10.0,
        backoff_s: float = 1.0,
    ) -> None:
        if count < 1:
            raise ValueError(f"workers must be at least 1, got {count}")
        self.names = [f"r{i}" for i in range(count)]
        self.command = list(command)
        self.env = {**os.environ, **(env or {})}
        self.min_uptime_s, self.backoff_s = min_uptime_s, backoff_s
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(self.names, 0)
        self._started: dict[str, float] = {}
        self._wait: dict[str, float] = dict.fromkeys(self.names, backoff_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self, name: str) -> None:
        self.processes[name] = subprocess.Popen([*self.command, "--replica", name], env=self.env)
        self._started[name] = time.monotonic()

    def start(self) -> None:
        for name in self.names:
            self._spawn(name)
        self._thread = threading.Thread(target=self._watch, name="replica-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for name, process in list(self.processes.items()):
                code = process.poll()
                if code is None:
                    continue
                uptime = time.monotonic() - self._started[name]
                wait = self._wait[name] if uptime < self.min_uptime_s else self.backoff_s
                _log.warning("replica %s exited with %s after %.1f s; restarting in %.1f s", name, code, uptime, wait)
                if self._stop.wait(wait):
                    return
                self._wait[name] = min(30.0, wait * 2)
                self.restarts[name] += 1
                self._spawn(name)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops the replicas (SIGTERM: they finish what they hold), then kills any still running."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def replica_command(argv: Sequence[str]) -> list[str]:
    """The command line that starts one replica: this interpreter running the CLI with ``argv``."""
    return [sys.executable, "-m", "monorec", *argv]
