"""Malformed logs and catalogues fail with a DataError naming the file, the column and the row count."""

import polars as pl
import pytest

from monorec.data.tables import load_dataset, read_table, validate_catalogue, validate_logs
from monorec.data.world import write_world
from monorec.errors import DataError


def _logs(**overrides):
    base = {
        "ts": [1, 2, 3],
        "canvas": ["home", "home", "search"],
        "entity_id": ["a", "b", "c"],
        "user_id": ["u1", "u1", "u2"],
        "query": [None, None, "robot"],
        "clicked": [1.0, 0.0, 1.0],
    }
    base.update(overrides)
    return pl.DataFrame(base, strict=False)


def test_valid_logs_pass(config):
    assert validate_logs(_logs(), config).height == 3


@pytest.mark.parametrize(
    ("frame_kwargs", "column", "rows", "needle"),
    [
        ({"canvas": ["home", "feed", "feed"]}, "canvas", 2, "unknown canvas 'feed'"),
        ({"ts": ["1", "x", "y"]}, "ts", 2, "expected"),
        ({"ts": [1.5, 2.0, 3.0]}, "ts", 1, "fractional"),
        ({"clicked": [1.0, float("nan"), 0.0]}, "clicked", 1, "NaN labels"),
        ({"clicked": [1.0, 2.0, 0.0]}, "clicked", 1, "0 or 1"),
        ({"clicked": [1.0, None, 0.0]}, "clicked", 1, "primary objective"),
        ({"entity_id": ["a", None, "c"]}, "entity_id", 1, "must not be empty"),
        ({"hour": ["morning", "3", "4"]}, "hour", 1, "expected"),
    ],
)
def test_malformed_logs(config, frame_kwargs, column, rows, needle):
    with pytest.raises(DataError) as info:
        validate_logs(_logs(**frame_kwargs), config, "logs/home.csv")
    err = info.value
    assert (err.file, err.column, err.rows) == ("logs/home.csv", column, rows)
    assert needle in str(err) and "logs/home.csv" in str(err)


def test_missing_required_column(config):
    with pytest.raises(DataError, match=r"missing required column\(s\) \['canvas'\]"):
        validate_logs(_logs().drop("canvas"), config, "x.parquet")


def test_missing_objective_column(config):
    with pytest.raises(DataError) as info:
        validate_logs(_logs().drop("clicked"), config, "x.parquet")
    assert info.value.column == "clicked"


def _catalogue(**overrides):
    base = {
        "entity_id": ["a", "b"],
        "entity_type": ["movie", "series"],
        "title": ["A", "B"],
        "categories": ["x", "y|z"],
    }
    base.update(overrides)
    return pl.DataFrame(base)


def test_catalogue_duplicates_and_types(config):
    assert validate_catalogue(_catalogue(), config).height == 2
    with pytest.raises(DataError) as info:
        validate_catalogue(_catalogue(entity_id=["a", "a"]), config, "catalogue.csv")
    assert (info.value.column, info.value.rows) == ("entity_id", 2)
    with pytest.raises(DataError, match="'podcast' is not declared"):
        validate_catalogue(_catalogue(entity_type=["movie", "podcast"]), config)
    with pytest.raises(DataError, match="missing required column"):
        validate_catalogue(_catalogue().drop("title"), config)


def test_empty_and_unknown_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("ts,canvas,entity_id\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(header_only)
    with pytest.raises(DataError, match="unsupported format"):
        (tmp_path / "x.json").write_text("{}")
        read_table(tmp_path / "x.json")
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "nope.parquet")


def test_dataset_folder_round_trip_and_csv(tmp_path, config):
    from tests.conftest import TINY

    folder = write_world(tmp_path / "world", TINY)
    catalogue, logs = load_dataset(folder, config)
    assert catalogue.height == TINY.n_items
    # the same data as CSV reads identically
    csv = tmp_path / "csv"
    (csv / "logs").mkdir(parents=True)
    catalogue.write_csv(csv / "catalogue.csv")
    logs.write_csv(csv / "logs" / "all.csv")
    c2, l2 = load_dataset(csv, config)
    assert c2.height == catalogue.height and l2.height == logs.height
    assert l2["clicked"].sum() == logs["clicked"].sum()


def test_a_folder_without_logs(tmp_path, config):
    (tmp_path / "d").mkdir()
    _catalogue().write_parquet(tmp_path / "d" / "catalogue.parquet")
    with pytest.raises(DataError, match="no log files"):
        load_dataset(tmp_path / "d", config)
