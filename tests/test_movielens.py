"""The MovieLens adapter on tiny files in each standard format (written here), and on the real
ml-latest-small when ../shared/data is present."""

import polars as pl
import pytest

from monorec.config import load_config
from monorec.data.movielens import read_movielens
from monorec.data.tables import validate_catalogue, validate_logs
from monorec.pipeline import default_config
from tests.conftest import SHARED_DATA

RATINGS = [(1, 10, 4.0, 100), (1, 20, 2.0, 110), (1, 30, 5.0, 120), (2, 20, 4.5, 105), (2, 30, 3.0, 130)]
MOVIES = [
    (10, "Toy Story (1995)", "Animation|Comedy"),
    (20, "Heat (1995)", "Action|Crime"),
    (30, "Fargo (1996)", "Crime"),
]


@pytest.fixture
def ml_config():
    return load_config(default_config("movielens"))


def _check(catalogue, logs, ml_config, with_search):
    validate_catalogue(catalogue, ml_config)
    validate_logs(logs, ml_config)
    assert catalogue.height == 3 and set(catalogue["entity_id"]) == {"m10", "m20", "m30"}
    counts = dict(logs.group_by("canvas").len().iter_rows())
    assert counts["home"] == 5 and counts["browse"] == 5
    assert counts["related"] == 3  # every rating after a user's first
    assert ("search" in counts) == with_search
    related = logs.filter(pl.col("canvas") == "related").sort("ts")
    assert related.select("user_id", "source_item_id", "entity_id").row(0) == ("u2", None, None) or related.select(
        "source_item_id", "entity_id"
    ).row(0) == ("m10", "m20")
    home = logs.filter(pl.col("canvas") == "home").sort("ts")
    assert home["liked"].to_list() == [1.0, 1.0, 0.0, 1.0, 0.0]
    # a home request's history is the user's earlier ratings only
    assert home.filter(pl.col("user_id") == "u1")["history"].to_list() == [None, "m10", "m10|m20"]
    browse = logs.filter(pl.col("canvas") == "browse")
    genres = dict(catalogue.select("entity_id", "categories").iter_rows())
    assert all(c in genres[e].split("|") for e, c in browse.select("entity_id", "category").iter_rows())


def test_ml_latest_format(tmp_path, ml_config):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "\n".join(",".join(map(str, r)) for r in RATINGS)
    )
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(f'{m},"{t}",{g}' for m, t, g in MOVIES))
    (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,30,dark comedy,125\n2,10,pixar,106\n")
    catalogue, logs = read_movielens(tmp_path)
    _check(catalogue, logs, ml_config, with_search=True)
    search = logs.filter(pl.col("canvas") == "search").sort("ts")
    assert search["query"].to_list() == ["pixar", "dark comedy"]
    assert search["liked"].to_list() == [None, 1.0]  # user 2 never rated movie 10: unobserved


def test_ml_1m_format(tmp_path, ml_config):
    (tmp_path / "ratings.dat").write_text("\n".join("::".join(str(int(x)) for x in r) for r in RATINGS))
    (tmp_path / "movies.dat").write_bytes("\n".join(f"{m}::{t}::{g}" for m, t, g in MOVIES).encode("latin-1"))
    _check(*read_movielens(tmp_path), ml_config, with_search=False)


def test_ml_100k_format(tmp_path, ml_config):
    from monorec.data.movielens import ML100K_GENRES

    (tmp_path / "u.data").write_text("\n".join("\t".join(str(int(x)) for x in r) for r in RATINGS))
    lines = []
    for m, t, g in MOVIES:
        flags = ["1" if name in g.split("|") else "0" for name in ML100K_GENRES]
        lines.append("|".join([str(m), t, "01-Jan-1995", "", "http://x", *flags]))
    (tmp_path / "u.item").write_bytes("\n".join(lines).encode("latin-1"))
    _check(*read_movielens(tmp_path), ml_config, with_search=False)


@pytest.mark.data
def test_real_ml_latest_small(ml_config):
    path = SHARED_DATA / "ml-latest-small"
    if not (path / "ratings.csv").exists():
        pytest.skip("../shared/data/ml-latest-small is absent")
    catalogue, logs = read_movielens(path)
    validate_logs(logs, ml_config)
    assert catalogue.height == 9742
    assert logs.filter(pl.col("canvas") == "home").height == 100836
    assert logs.filter(pl.col("canvas") == "search").height > 3000
