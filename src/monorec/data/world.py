"""A seeded synthetic world: the embedded default dataset for the demo and the tests.

Latent structure, so that models can learn and metrics mean something:
- items (movies and series) belong to one or two topics, have a latent vector near their topics' centres,
  a popularity, and titles drawn from their topics' words;
- users have a taste vector (one or two topics), a country (with its language and a slight taste shift)
  and a device (TV viewers prefer series, a bit more in the evening);
- each request is on one canvas; a logging policy shows ``impressions`` entities, noisily by the canvas's
  true utility; clicks follow that utility, likes and watch time follow the user's taste;
- search queries are words of a topic (sometimes a title word); browse categories are topics;
- with ``notify_share`` > 0, a fifth canvas ``notify`` (push notifications): the user's taste leaning to
  popular entities, and only ``NOTIFY_PUSHED`` entities pushed per request;
- every request carries the user's recently clicked entities (``history``, oldest first);
- a few bot users and some double-logged impressions, so that label cleaning has something to clean.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from monorec.artifacts import atomic_dir

__all__ = ["LatentWorld", "WorldSpec", "generate_world", "latent_world", "write_world"]

TOPICS: dict[str, list[str]] = {
    "action": ["fist", "chase", "blast", "agent", "strike", "fury", "bullet", "steel", "rogue", "siege"],
    "comedy": ["laugh", "party", "crazy", "funny", "wedding", "buddy", "prank", "silly", "goofy", "holiday"],
    "drama": ["silent", "river", "letter", "mother", "winter", "promise", "broken", "journey", "truth", "home"],
    "scifi": ["galaxy", "robot", "quantum", "orbit", "alien", "cyber", "planet", "nebula", "clone", "warp"],
    "horror": ["haunted", "blood", "scream", "shadow", "curse", "grave", "demon", "cellar", "witch", "fog"],
    "romance": ["kiss", "heart", "paris", "summer", "bride", "love", "moonlight", "dance", "roses", "forever"],
    "documentary": ["ocean", "earth", "history", "wild", "science", "empire", "climate", "jungle", "secret", "life"],
    "animation": ["dragon", "toy", "magic", "bunny", "pixel", "kingdom", "tiny", "monster", "castle", "candy"],
}
FILLERS = ["the", "of", "night", "last", "city", "world", "return", "story", "day", "legend"]
COUNTRIES = {"US": "en", "GB": "en", "DE": "de", "FR": "fr", "BR": "pt"}
DEVICES = ["mobile", "tv", "web"]
CANVAS_SHARES = {"home": 0.45, "related": 0.25, "search": 0.18, "browse": 0.12}
NOTIFY_PUSHED = 2  # entities a notify request pushes (its logged impressions)
DAY = 86400
EPOCH = 1_700_000_000
HISTORY = 20  # clicked entities a request's history carries


@dataclass(frozen=True)
class WorldSpec:
    """Size and randomness of a synthetic world."""

    n_users: int = 1500
    n_items: int = 1500
    n_requests: int = 12000
    impressions: int = 10  # entities shown per request
    days: int = 60
    latent_dim: int = 16
    n_bots: int = 3
    duplicate_rate: float = 0.01  # share of impressions logged twice
    seed: int = 0
    notify_share: float = 0.0  # share of requests on the ``notify`` canvas (0: the four canvases only)

    def canvas_shares(self) -> dict[str, float]:
        """Canvas -> share of requests."""
        if self.notify_share <= 0:
            return dict(CANVAS_SHARES)
        rest = 1.0 - self.notify_share
        return {**{c: share * rest for c, share in CANVAS_SHARES.items()}, "notify": self.notify_share}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _click_histories(logs: pl.DataFrame, length: int) -> pl.DataFrame:
    """(request_id, history): the user's ``length`` most recently clicked entities before each request
    (strictly earlier requests; oldest first), as a product logs the context it answered."""
    clicks = logs.filter(pl.col("clicked") == 1).select("user_id", "ts", "request_id", "entity_id")
    requests = logs.select("request_id", "user_id", "ts").unique("request_id", maintain_order=True)
    by_user: dict[str, list[tuple[int, str]]] = {}
    for user, ts, entity in clicks.sort("ts", "request_id").select("user_id", "ts", "entity_id").iter_rows():
        by_user.setdefault(user, []).append((ts, entity))
    out = []
    for _, user, ts in requests.iter_rows():
        seen = by_user.get(user, [])
        before = bisect.bisect_left(seen, (ts, ""))  # clicks of requests strictly earlier in time
        out.append("|".join(e for _, e in seen[max(0, before - length) : before]) or None)
    return pl.DataFrame({"request_id": requests["request_id"], "history": pl.Series(out, dtype=pl.String)})


@dataclass(frozen=True)
class LatentWorld:
    """The hidden truth a world's logs are drawn from (I items, U users, T topics, D latent dimensions):
    what a perfect model would know (``scripts/synthetic_headroom.py`` ranks by it). The logs never contain it."""

    topics: list[str]
    centres: np.ndarray  # (T, D) each topic's direction
    item_vec: np.ndarray  # (I, D)
    popularity: np.ndarray  # (I,)
    is_series: np.ndarray  # (I,) bool
    in_topic: np.ndarray  # (I, T) bool
    title_words: list[set[str]]  # (I,) lower-case words of each title
    item_ids: np.ndarray  # (I,) entity ids
    titles: list[str]
    categories: list[str]  # "a|b"
    taste: np.ndarray  # (U, D)
    user_country: np.ndarray  # (U,) index into COUNTRIES
    user_device: np.ndarray  # (U,) index into DEVICES
    activity: np.ndarray  # (U,) request rate weights
    latent_dim: int

    def affinity(self, users: np.ndarray, evening: np.ndarray) -> np.ndarray:
        """(B,) user indices, (B,) 1.0 for an evening request -> (B, I) how much each user likes each item:
        taste, popularity and, on a TV, a lean to series (more in the evening)."""
        d = self.latent_dim
        affinity = self.taste[users] @ self.item_vec.T / np.sqrt(d) * 2.0 + 0.4 * self.popularity[None, :]
        tv = (self.user_device[users] == DEVICES.index("tv"))[:, None]
        return affinity + (tv * (0.4 + 0.3 * evening)[:, None]) * np.where(self.is_series, 1.0, -0.3)[None, :]

    def browse_utility(self, affinity: np.ndarray, topic: int) -> np.ndarray:
        """(..., I) affinities of a browse request for topic index ``topic`` -> (..., I) its utility: the
        topic's entities first, then the user's affinity."""
        return 2.5 * self.in_topic[:, topic] + 0.5 * affinity


def latent_world(spec: WorldSpec = WorldSpec()) -> tuple[LatentWorld, np.random.Generator]:
    """Draws the world's items and users (the same draws :func:`generate_world` makes first) -> the latent
    truth and the generator, positioned where the requests' draws begin."""
    rng = np.random.default_rng(spec.seed)
    topics = list(TOPICS)
    n_topics, d = len(topics), spec.latent_dim
    centres = rng.normal(size=(n_topics, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    # ---- items: (I,) topic ids, (I, D) latent vectors, (I,) popularity
    main = rng.integers(0, n_topics, spec.n_items)
    second = np.where(rng.random(spec.n_items) < 0.3, rng.integers(0, n_topics, spec.n_items), -1)
    second = np.where(second == main, -1, second)
    item_vec = (
        centres[main]
        + 0.5 * np.where(second[:, None] >= 0, centres[second], 0)
        + 0.35 * rng.normal(size=(spec.n_items, d))
    )
    popularity = rng.normal(0.0, 1.0, spec.n_items)
    is_series = rng.random(spec.n_items) < 0.3
    titles, categories, title_words = [], [], []
    for i in range(spec.n_items):
        words = list(rng.choice(TOPICS[topics[main[i]]], 2, replace=False))
        if second[i] >= 0:
            words.append(str(rng.choice(TOPICS[topics[second[i]]])))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(FILLERS)))
        titles.append(" ".join(words).title())
        title_words.append({w.lower() for w in words})
        categories.append("|".join(topics[t] for t in (main[i], second[i]) if t >= 0))
    item_ids = np.array([f"{'s' if is_series[i] else 'm'}{i:05d}" for i in range(spec.n_items)])
    in_topic = np.zeros((spec.n_items, n_topics), dtype=bool)
    in_topic[np.arange(spec.n_items), main] = True
    in_topic[np.arange(spec.n_items)[second >= 0], second[second >= 0]] = True

    # ---- users: (U, D) tastes, countries, devices, activity
    countries = list(COUNTRIES)
    country_shift = 0.4 * rng.normal(size=(len(countries), d))
    fav = rng.integers(0, n_topics, (spec.n_users, 2))
    user_country = rng.choice(len(countries), spec.n_users, p=[0.35, 0.15, 0.2, 0.15, 0.15])
    taste = (
        centres[fav[:, 0]]
        + 0.6 * centres[fav[:, 1]]
        + country_shift[user_country]
        + 0.3 * rng.normal(size=(spec.n_users, d))
    )
    user_device = rng.choice(len(DEVICES), spec.n_users, p=[0.5, 0.3, 0.2])
    activity = rng.pareto(1.5, spec.n_users) + 1.0
    world = LatentWorld(
        topics=topics,
        centres=centres,
        item_vec=item_vec,
        popularity=popularity,
        is_series=is_series,
        in_topic=in_topic,
        title_words=title_words,
        item_ids=item_ids,
        titles=titles,
        categories=categories,
        taste=taste,
        user_country=user_country,
        user_device=user_device,
        activity=activity,
        latent_dim=d,
    )
    return world, rng


def generate_world(spec: WorldSpec = WorldSpec()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generates (catalogue, logs) in the documented schema (see :mod:`monorec.data.tables`)."""
    w, rng = latent_world(spec)
    topics, n_topics = w.topics, len(w.topics)
    item_vec, is_series, in_topic, item_ids, user_country = (
        w.item_vec,
        w.is_series,
        w.in_topic,
        w.item_ids,
        w.user_country,
    )
    countries = list(COUNTRIES)
    catalogue = pl.DataFrame(
        {
            "entity_id": item_ids,
            "entity_type": np.where(is_series, "series", "movie"),
            "title": w.titles,
            "categories": w.categories,
        }
    )
    topic_pref = w.taste @ w.centres.T  # (U, T)

    # ---- requests
    n = spec.n_requests
    user = rng.choice(spec.n_users, n, p=w.activity / w.activity.sum())
    shares = spec.canvas_shares()
    canvas = rng.choice(list(shares), n, p=list(shares.values()))
    ts = np.sort(rng.integers(EPOCH, EPOCH + spec.days * DAY, n))
    hour = ((ts % DAY) // 3600).astype(np.float64)
    evening = (hour >= 18).astype(np.float64)

    rows: list[pl.DataFrame] = []
    chunk = 1000
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        u, cv, b = user[sl], canvas[sl], np.arange(sl.start, sl.stop)
        affinity = w.affinity(u, evening[b])  # (B, I)
        utility = affinity.copy()
        source = np.full(len(u), -1)
        query = np.full(len(u), None, dtype=object)
        category = np.full(len(u), None, dtype=object)
        for j in range(len(u)):
            if cv[j] == "related":
                g = rng.gumbel(size=spec.n_items)
                source[j] = int(np.argmax(affinity[j] + g))
                sim = (
                    item_vec
                    @ item_vec[source[j]]
                    / (np.linalg.norm(item_vec, axis=1) * np.linalg.norm(item_vec[source[j]]))
                )
                utility[j] = 3.0 * sim + 0.4 * affinity[j]
                utility[j, source[j]] = -10.0
            elif cv[j] in ("search", "browse"):
                p = np.exp(topic_pref[u[j]] * 2.0)
                t = int(rng.choice(n_topics, p=p / p.sum()))
                if cv[j] == "browse":
                    category[j] = topics[t]
                    utility[j] = w.browse_utility(affinity[j], t)
                else:
                    words = list(rng.choice(TOPICS[topics[t]], int(rng.integers(1, 3)), replace=False))
                    query[j] = " ".join(words)
                    match = np.array([len(tw.intersection(words)) for tw in w.title_words], dtype=np.float64)
                    utility[j] = 2.0 * in_topic[:, t] + 1.5 * match + 0.4 * affinity[j]
            elif cv[j] == "notify":  # a push: the user's taste, leaning to what is popular
                utility[j] = affinity[j] + 0.8 * w.popularity
        # the logging policy: Gumbel top-k on a tempered utility, so that impressions are informative
        noisy = utility / 1.5 + rng.gumbel(size=utility.shape)
        shown = np.argpartition(-noisy, spec.impressions, axis=1)[:, : spec.impressions]  # (B, K)
        u_shown = np.take_along_axis(utility, shown, axis=1)
        a_shown = np.take_along_axis(affinity, shown, axis=1)
        clicked = rng.random(u_shown.shape) < _sigmoid(1.6 * (u_shown - np.quantile(u_shown, 0.8)))
        liked = np.where(clicked, rng.random(u_shown.shape) < _sigmoid(1.2 * a_shown - 0.3), np.nan)
        watch = np.where(
            clicked,
            np.exp(5.0 + 0.35 * a_shown + 0.5 * is_series[shown] + 0.4 * rng.normal(size=u_shown.shape)),
            np.nan,
        )
        k = spec.impressions
        uu = np.repeat(u, k)
        # a notify request logs only the entities it pushed
        logged = ((cv != "notify")[:, None] | (np.arange(k) < NOTIFY_PUSHED)[None, :]).ravel()
        rows.append(
            pl.DataFrame(
                {
                    "request_id": np.repeat([f"r{x:07d}" for x in b], k),
                    "ts": np.repeat(ts[b], k),
                    "canvas": np.repeat(cv, k),
                    "user_id": [f"u{x:05d}" for x in uu],
                    "country": np.array(countries)[user_country[uu]],
                    "language": np.array([COUNTRIES[c] for c in countries])[user_country[uu]],
                    "device": np.array(DEVICES)[w.user_device[uu]],
                    "source_item_id": [item_ids[s] if s >= 0 else None for s in np.repeat(source, k)],
                    "query": np.repeat(query, k).tolist(),
                    "category": np.repeat(category, k).tolist(),
                    "hour": np.repeat(hour[b], k),
                    "entity_id": item_ids[shown.ravel()],
                    "clicked": clicked.ravel().astype(np.float64),
                    "liked": liked.ravel().astype(np.float64),
                    "watch_seconds": np.round(watch.ravel(), 1),
                },
                strict=False,
            ).filter(pl.Series(logged))
        )
    logs = pl.concat(rows).with_columns(pl.col("liked").fill_nan(None), pl.col("watch_seconds").fill_nan(None))
    logs = logs.join(_click_histories(logs, HISTORY), on="request_id", how="left")

    # ---- noise that label preparation must clean: bots and double-logged impressions
    bots = []
    for bot in range(spec.n_bots):
        m = 2500
        bots.append(
            logs.sample(m, with_replacement=True, seed=spec.seed + bot).with_columns(
                pl.lit(f"bot{bot:02d}").alias("user_id"),
                (pl.lit(EPOCH + (bot + 1) * DAY) + pl.int_range(m)).alias("ts"),
                pl.lit(1.0).alias("clicked"),
                (pl.lit(f"b{bot}-") + pl.int_range(m).cast(pl.String)).alias("request_id"),
            )
        )
    dups = logs.sample(fraction=spec.duplicate_rate, seed=spec.seed)
    logs = pl.concat([logs, *bots, dups]).sort("ts", maintain_order=True)
    logs = logs.with_columns(
        pl.when(pl.col("clicked") == 0).then(None).otherwise(pl.col("liked")).alias("liked"),
        pl.when(pl.col("clicked") == 0).then(None).otherwise(pl.col("watch_seconds")).alias("watch_seconds"),
    )
    return catalogue, logs


def write_world(out: str | Path, spec: WorldSpec = WorldSpec()) -> Path:
    """Generates a world and writes it as a dataset folder (catalogue + one log file per canvas)."""
    catalogue, logs = generate_world(spec)
    with atomic_dir(out, manifest={"kind": "dataset", "generator": "synthetic", "spec": spec.__dict__}) as tmp:
        catalogue.write_parquet(tmp / "catalogue.parquet")
        (tmp / "logs").mkdir()
        for canvas in spec.canvas_shares():
            logs.filter(pl.col("canvas") == canvas).write_parquet(tmp / "logs" / f"{canvas}.parquet")
    return Path(out)
