"""The catalogue store's cached reads of entity descriptions: a repeated read asks SQLite nothing, a write
through the store (from any thread) is seen by the very next read, and a write through another
connection or process within ``OTHERS_CHECKED_EVERY_S``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from monorec.stream.catalogue import OTHERS_CHECKED_EVERY_S, CatalogueStore, Entity
from monorec.stream.changes import Change


def _upsert(entity_id: str, revision: int, title: str) -> Change:
    return Change("upsert", entity_id, revision, "movie", title, ("drama",))


def _store(tmp_path: Path) -> CatalogueStore:
    store = CatalogueStore(tmp_path / "catalogue.sqlite")
    store.apply([_upsert("m1", 1, "First"), _upsert("m2", 1, "Second")])
    return store


def test_a_repeated_read_asks_only_for_the_data_version(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.entities(["m1", "m2", "nope"]) == {
        "m1": Entity("m1", "movie", "First", ("drama",), 1),
        "m2": Entity("m2", "movie", "Second", ("drama",), 1),
    }
    statements: list[str] = []
    store._file._connection().set_trace_callback(statements.append)
    assert store.titles(["m2", "m1", "nope"]) == {"m2": "Second", "m1": "First"}
    assert statements in ([], ["PRAGMA data_version"])  # the unknown id is remembered too
    time.sleep(OTHERS_CHECKED_EVERY_S)
    assert store.titles(["m1"]) == {"m1": "First"}
    assert statements[-1] == "PRAGMA data_version"  # another connection's commits are looked for, no more


def test_writes_through_the_store_and_from_another_thread_are_read_at_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.titles(["m1", "m3"]) == {"m1": "First"}
    store.apply([_upsert("m1", 2, "First, renamed"), _upsert("m3", 1, "Third")])  # this thread's connection
    assert store.titles(["m1", "m3"]) == {"m1": "First, renamed", "m3": "Third"}
    writer = threading.Thread(target=store.apply, args=([Change("delete", "m3", 2, "movie", "Third", ())],))
    writer.start()
    writer.join()
    assert store.titles(["m1", "m3"]) == {"m1": "First, renamed"}


def test_another_connection_and_another_process_are_seen_at_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.entities(["m2"])["m2"].title == "Second"
    CatalogueStore(store.path).apply([_upsert("m2", 2, "Second, again")])  # another connection
    time.sleep(OTHERS_CHECKED_EVERY_S)
    assert store.entities(["m2"])["m2"].title == "Second, again"
    script = (
        "import sys; from monorec.stream.catalogue import CatalogueStore; from monorec.stream.changes import Change;"
        "CatalogueStore(sys.argv[1]).apply([Change('upsert', 'm2', 3, 'series', 'From elsewhere', ())])"
    )
    subprocess.run([sys.executable, "-c", script, str(store.path)], check=True, timeout=60)
    time.sleep(OTHERS_CHECKED_EVERY_S)
    assert store.entities(["m2"])["m2"] == Entity("m2", "series", "From elsewhere", (), 3)
