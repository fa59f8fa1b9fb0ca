"""MovieLens adapter: the standard GroupLens files -> the documented dataset schema.

Formats (detected from the files present):
- ml-latest / ml-latest-small: ``ratings.csv``, ``movies.csv``, optional ``tags.csv``;
- ml-1m: ``ratings.dat`` and ``movies.dat`` (``::``-separated, latin-1);
- ml-100k: ``u.data`` (tab-separated) and ``u.item`` (``|``-separated, latin-1, 19 genre flags).

Canvases (see ../shared/data/README.md):
- home: every rating is a (user -> movie) request, with the user's previous ratings as its history;
- related: the movie a user rated right after another one, with that other one as the source (and the
  user's previous ratings, ending with it, as the session so far);
- search: a tag's text as the query and the tagged movie as relevant (only where tags exist), with the
  user's ratings before the tag as history;
- browse: one of the movie's genres (chosen by a stable hash) plus the user and their history.
Objectives: ``watched`` (1 for a rating; sampled negatives get 0), ``liked`` (rating >= 4), ``rating``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import polars as pl

from monorec.artifacts import atomic_dir
from monorec.errors import DataError

__all__ = ["is_movielens", "read_movielens", "write_movielens"]

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def is_movielens(path: str | Path) -> bool:
    path = Path(path)
    return any((path / f).exists() for f in ("ratings.csv", "ratings.dat", "u.data"))


def _read_sep(path: Path, sep: str, names: list[str]) -> pl.DataFrame:
    """Reads a file with a multi-character separator (ml-1m's ``::``) in latin-1."""
    lines = path.read_bytes().decode("latin-1").splitlines()
    rows = [line.split(sep) for line in lines if line.strip()]
    bad = sum(1 for r in rows if len(r) != len(names))
    if bad:
        raise DataError(str(path), f"expected {len(names)} fields separated by {sep!r}", rows=bad)
    return pl.DataFrame(rows, schema=names, orient="row")


def _load_raw(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """(ratings [user, movie, rating, ts], movies [movie, title, genres], tags [user, movie, tag, ts] or None)."""
    if (path / "ratings.csv").exists():
        ratings = pl.read_csv(path / "ratings.csv", schema_overrides={"userId": pl.String, "movieId": pl.String})
        ratings = ratings.rename({"userId": "user", "movieId": "movie", "timestamp": "ts"})
        movies = pl.read_csv(path / "movies.csv", schema_overrides={"movieId": pl.String}).rename({"movieId": "movie"})
        tags = None
        if (path / "tags.csv").exists():
            tags = pl.read_csv(
                path / "tags.csv", schema_overrides={"userId": pl.String, "movieId": pl.String, "tag": pl.String}
            )
            tags = tags.rename({"userId": "user", "movieId": "movie", "timestamp": "ts"})
        return ratings, movies, tags
    if (path / "ratings.dat").exists():
        ratings = _read_sep(path / "ratings.dat", "::", ["user", "movie", "rating", "ts"])
        movies = _read_sep(path / "movies.dat", "::", ["movie", "title", "genres"])
    elif (path / "u.data").exists():
        ratings = _read_sep(path / "u.data", "\t", ["user", "movie", "rating", "ts"])
        raw = _read_sep(path / "u.item", "|", ["movie", "title", "release", "video", "url", *ML100K_GENRES])
        genres = (
            pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)).otherwise(None) for g in ML100K_GENRES])
            .list.drop_nulls()
            .list.join("|")
        )
        movies = raw.select("movie", "title", genres.alias("genres"))
    else:
        raise DataError(str(path), "no MovieLens ratings file (ratings.csv, ratings.dat or u.data)")
    ratings = ratings.with_columns(pl.col("rating").cast(pl.Float64), pl.col("ts").cast(pl.Int64))
    return ratings, movies, None


HISTORY = 20  # movies of a home request's history: the user's previous ratings, most recent last


def _history(ratings: pl.DataFrame, length: int) -> pl.Series:
    """For ratings sorted by (user, time): the user's previous ``length`` movies, "|"-separated, at each row
    (strictly earlier rows only, so a request never sees its own answer)."""
    out: list[str | None] = []
    for (_,), group in ratings.group_by("user_id", maintain_order=True):
        ids = group["entity_id"].to_list()
        out += ["|".join(ids[max(0, i - length) : i]) or None for i in range(len(ids))]
    return pl.Series("history", out, dtype=pl.String)


def _history_after(ratings: pl.DataFrame, length: int) -> pl.DataFrame:
    """(user_id, ts, history): after each rating, the user's ``length`` most recent movies including it (for
    requests at a later time, joined "as of" their timestamp)."""
    joined = pl.concat_str(["history", "entity_id"], separator="|", ignore_nulls=True)
    last = joined.str.split("|").list.tail(length).list.join("|")
    after = ratings.select("user_id", "ts", last.alias("history"))
    return after.unique(["user_id", "ts"], keep="last", maintain_order=True).sort("ts")


def _canvas_rows(frame: pl.DataFrame, canvas: str, context: list[str], outcome: list[pl.Expr]) -> pl.DataFrame:
    """One canvas's log rows: a request id per row, the canvas, its context fields, the outcomes."""
    return frame.select(
        (canvas[0] + pl.int_range(pl.len()).cast(pl.String)).alias("request_id"),
        "ts",
        pl.lit(canvas).alias("canvas"),
        *context,
        "entity_id",
        *outcome,
    )


def read_movielens(path: str | Path, *, history: int = HISTORY) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reads a MovieLens folder into (catalogue, logs) in the documented schema; every request carries the
    user's ``history`` most recent movies before it."""
    path = Path(path)
    ratings, movies, tags = _load_raw(path)
    catalogue = movies.select(
        ("m" + pl.col("movie").cast(pl.String)).alias("entity_id"),
        pl.lit("movie").alias("entity_type"),
        pl.col("title").cast(pl.String),
        pl.col("genres").cast(pl.String).replace({"(no genres listed)": ""}).alias("categories"),
    ).unique("entity_id", keep="first", maintain_order=True)
    r = ratings.with_columns(
        ("u" + pl.col("user").cast(pl.String)).alias("user_id"),
        ("m" + pl.col("movie").cast(pl.String)).alias("entity_id"),
        pl.col("ts").cast(pl.Int64),
        pl.col("rating").cast(pl.Float64),
    ).sort(["user_id", "ts", "entity_id"])
    outcome = [pl.lit(1.0).alias("watched"), (pl.col("rating") >= 4).cast(pl.Float64).alias("liked"), pl.col("rating")]
    r = r.with_columns(_history(r, history))
    home = _canvas_rows(r, "home", ["user_id", "history"], outcome)
    related = _canvas_rows(
        r.with_columns(pl.col("entity_id").shift(1).over("user_id").alias("source_item_id")).filter(
            pl.col("source_item_id").is_not_null()
        ),
        "related",
        ["user_id", "source_item_id", "history"],  # the session so far, ending with the source movie
        outcome,
    )
    genres = catalogue.select("entity_id", pl.col("categories").str.split("|").alias("_genres"))
    browse = r.join(genres, on="entity_id", how="left").filter(
        (pl.col("_genres").list.len() > 0) & (pl.col("_genres").list.first() != "")
    )
    # one of the movie's genres, chosen by a stable hash of (user, movie): deterministic across runs
    pick = [zlib.crc32(f"{u}|{e}".encode()) for u, e in browse.select("user_id", "entity_id").iter_rows()]
    browse = browse.with_columns(pl.Series("_pick", pick, dtype=pl.Int64)).with_columns(
        pl.col("_genres").list.get(pl.col("_pick") % pl.col("_genres").list.len()).alias("category")
    )
    parts = [home, related, _canvas_rows(browse, "browse", ["user_id", "category", "history"], outcome)]
    if tags is not None:
        t = tags.with_columns(
            ("u" + pl.col("user").cast(pl.String)).alias("user_id"),
            ("m" + pl.col("movie").cast(pl.String)).alias("entity_id"),
            pl.col("ts").cast(pl.Int64),
            pl.col("tag").alias("query"),
        ).join(r.select("user_id", "entity_id", "rating"), on=["user_id", "entity_id"], how="left")
        t = t.filter(pl.col("query").is_not_null() & (pl.col("query").str.strip_chars() != ""))
        t = t.sort("ts").join_asof(
            _history_after(r, history),
            on="ts",
            by="user_id",
            strategy="backward",
            allow_exact_matches=False,  # a rating at the tag's very second may be the tagged movie's own
            check_sortedness=False,  # both sides are sorted by ts; polars cannot check it with groups
        )
        search_outcome = [pl.lit(1.0).alias("watched"), *outcome[1:]]  # liked/rating only if the user rated it
        parts.append(_canvas_rows(t, "search", ["user_id", "query", "history"], search_outcome))
    logs = pl.concat(parts, how="diagonal_relaxed").sort("ts", maintain_order=True)
    return catalogue, logs.filter(pl.col("entity_id").is_in(catalogue["entity_id"].implode()))


def write_movielens(src: str | Path, out: str | Path) -> Path:
    """Converts a MovieLens folder into a dataset folder (catalogue + one log file per canvas)."""
    catalogue, logs = read_movielens(src)
    with atomic_dir(out, manifest={"kind": "dataset", "source": "movielens", "from": str(src)}) as tmp:
        catalogue.write_parquet(tmp / "catalogue.parquet")
        (tmp / "logs").mkdir()
        for (canvas,), part in logs.group_by("canvas", maintain_order=True):
            part.write_parquet(tmp / "logs" / f"{canvas}.parquet")
    return Path(out)
