"""Catalogue changes: every malformed change is refused with a typed error naming its field."""

from __future__ import annotations

import json

import pytest

from monorec.errors import ChangeError
from monorec.stream.changes import MAX_CHANGE_BYTES, Change, changes_frame, parse_change

TYPES = ("movie", "series")
GOOD = {"op": "upsert", "entity_id": "m1", "revision": 3, "entity_type": "movie", "title": "T", "categories": ["a"]}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("{not json", "*"),
        ("[1, 2]", "*"),
        ("x" * (MAX_CHANGE_BYTES + 1), "*"),
        ({**GOOD, "op": "merge"}, "op"),
        ({**GOOD, "entity_id": ""}, "entity_id"),
        ({**GOOD, "entity_id": 7}, "entity_id"),
        ({**GOOD, "revision": -1}, "revision"),
        ({**GOOD, "revision": True}, "revision"),
        ({**GOOD, "revision": "3"}, "revision"),
        # regression (issue 9.1): a revision past int64 poisoned every consumer that stores it
        ({**GOOD, "revision": 2**63}, "revision"),
        ({"op": "delete", "entity_id": "m1", "revision": 10**30}, "revision"),
        # regression (issue 9.3): control characters in ids do not survive every store
        ({**GOOD, "entity_id": "zz\x00"}, "entity_id"),
        ({**GOOD, "entity_id": "\x00"}, "entity_id"),
        ({**GOOD, "entity_id": "a\nb"}, "entity_id"),
        ({**GOOD, "entity_id": "x" * 257}, "entity_id"),
        # regression (issue 9.5): "a|b" was stored as two categories; an upsert without a title blanked it
        ({**GOOD, "categories": ["a|b"]}, "categories"),
        ({k: v for k, v in GOOD.items() if k != "title"}, "title"),
        ({k: v for k, v in GOOD.items() if k != "categories"}, "categories"),
        ({**GOOD, "entity_type": "spaceship"}, "entity_type"),
        ({**GOOD, "title": 5}, "title"),
        ({**GOOD, "title": "t" * 5000}, "title"),
        ({**GOOD, "categories": [""]}, "categories"),
        ({**GOOD, "categories": ["c"] * 65}, "categories"),
    ],
)
def test_malformed_changes_name_their_field(payload, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ChangeError) as info:
        parse_change(payload, TYPES)
    assert info.value.field == field


def test_valid_changes_round_trip_through_json() -> None:
    upsert = parse_change(json.dumps(GOOD), TYPES)
    assert upsert == Change("upsert", "m1", 3, "movie", "T", ("a",))
    assert parse_change(upsert.to_json(), TYPES) == upsert
    assert parse_change({**GOOD, "categories": "a|b"}, TYPES).categories == ("a", "b")  # the table's form
    assert parse_change({**GOOD, "revision": 2**63 - 1}, TYPES).revision == 2**63 - 1
    assert parse_change({**GOOD, "entity_id": "é 東京 ok"}, TYPES).entity_id == "é 東京 ok"
    delete = parse_change({"op": "delete", "entity_id": "m1", "revision": 4}, TYPES)
    assert delete == Change("delete", "m1", 4) and parse_change(delete.to_json(), TYPES) == delete
    frame = changes_frame([upsert])
    assert frame.row(0) == ("m1", "movie", "T", "a", 3)


def test_a_publish_batch_is_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from monorec.stream.log import SqliteChangeLog
    from monorec.stream.publish import MAX_PUBLISH_BATCH, publish_changes

    log = SqliteChangeLog(tmp_path / "changes.sqlite")
    with pytest.raises(ChangeError, match="at most"):
        publish_changes(log, [GOOD] * (MAX_PUBLISH_BATCH + 1), TYPES)
    with pytest.raises(ChangeError, match="entity_type"):  # one bad change: none of the batch is appended
        publish_changes(log, [GOOD, {**GOOD, "entity_type": "ufo"}], TYPES)
    assert log.head() == "0"
    assert publish_changes(log, [GOOD, {**GOOD, "revision": 4}], TYPES) == ["1", "2"]


def test_publish_checks_change_objects_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression (issue 9.1): a Change built in code (as the API did) reached the log unchecked."""
    from monorec.stream.log import SqliteChangeLog
    from monorec.stream.publish import publish_changes

    log = SqliteChangeLog(tmp_path / "changes.sqlite")
    with pytest.raises(ChangeError, match="revision"):
        publish_changes(log, [Change("delete", "pdel", 10**30)], TYPES)
    assert log.head() == "0"
