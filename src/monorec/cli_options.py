"""Options the ``monorec`` subcommands share (see :mod:`monorec.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_command", "add_ray_option"]


def add_command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help shows every option's default."""
    return sub.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)


def add_ray_option(p: argparse.ArgumentParser, *, runs: str, shared: str) -> None:
    """``--ray auto|ADDRESS``: where a distributed path runs (``runs``: what it does on Ray; ``shared``: the
    folders every Ray node must read)."""
    p.add_argument(
        "--ray",
        default=None,
        metavar="auto|ADDRESS",
        help=f"{runs} on Ray: auto ($RAY_ADDRESS, else a local cluster) or a cluster's address "
        f"(pip install 'monorec[ray]'; {shared} must be readable from every node)",
    )
