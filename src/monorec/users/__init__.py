"""Users as well as items: each deployed version's store of user encodings (see :mod:`monorec.users.store`).

``create_user_store`` makes an empty one from the config's ``[index]`` table, ``load_user_store`` the one a
version's checkpoint folder holds (or, for Redis, the hashes the version already has).
"""

from __future__ import annotations

from pathlib import Path

from monorec.config import IndexSpec
from monorec.users.store import USERS_FILE, LocalUserStore, UserStore

__all__ = ["USERS_FILE", "LocalUserStore", "UserStore", "create_user_store", "load_user_store", "user_key"]


def user_key(canvas: str, user_id: str) -> str:
    """The store key of a user's encoding in one canvas (ids never hold control characters)."""
    return f"{canvas}\x1f{user_id}"


def _redis(spec: IndexSpec, version: str, width: int) -> UserStore:
    from monorec.users.redis_store import RedisUserStore  # optional engine: monorec[scale]

    return RedisUserStore(spec.users_redis_url, version, width)


def create_user_store(spec: IndexSpec, version: str, width: int) -> UserStore:
    """An empty store for ``version`` (a Redis one is emptied: a fresh bulk pass fills it)."""
    if spec.users == "redis":
        store = _redis(spec, version, width)
        store.drop()
        return store
    return LocalUserStore(width)


def load_user_store(spec: IndexSpec, folder: Path, version: str, width: int) -> UserStore:
    """The store as of the version's checkpoint in ``folder`` (Redis: the hashes as they are; the log replay
    after the checkpoint's offset is harmless, revisions decide)."""
    if spec.users == "redis":
        return _redis(spec, version, width)
    return LocalUserStore.load(folder, width)
