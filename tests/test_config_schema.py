import dataclasses
import tomllib

import polars as pl
import pytest

from monorec.config import check_config, load_config, parse_config
from monorec.errors import ConfigError, RequestError
from monorec.pipeline import default_config
from monorec.schema import ContextSchema


@pytest.mark.parametrize("name", ["synthetic", "movielens"])
def test_every_shipped_config_is_valid_and_round_trips(name):
    cfg = load_config(default_config(name))
    assert parse_config(cfg.to_dict()) == cfg
    assert check_config(default_config(name)) == []


def test_every_section_survives_a_round_trip():
    """Non-default values in every table come back (a section left out of to_dict would reset silently)."""
    from monorec.config import DeploySpec, IndexSpec

    cfg = load_config(default_config("synthetic"))
    changed = dataclasses.replace(
        cfg,
        labels=dataclasses.replace(cfg.labels, negative_sampling="popularity"),
        split=dataclasses.replace(cfg.split, valid_fraction=0.2),
        model=dataclasses.replace(cfg.model, experts=7),
        train=dataclasses.replace(cfg.train, epochs=3),
        evaluate=dataclasses.replace(cfg.evaluate, k=5),
        index=IndexSpec(kind="hnsw", ef_search=7, qdrant_url="http://q:6333"),
        deploy=DeploySpec(batch_size=3, loader_checkpoint_s=0.5),
    )
    for section in ("labels", "split", "model", "train", "evaluate", "index", "deploy"):
        assert getattr(changed, section) != getattr(cfg, section), section
    assert parse_config(changed.to_dict()) == changed


def _raw(name="synthetic"):
    return tomllib.loads(default_config(name).read_text())


def test_config_check_reports_every_problem_at_once():
    raw = _raw()
    raw["canvases"]["home"]["fields"].append("nope")  # unknown field
    raw["canvases"]["search"]["primary"] = "watch"  # not among its objectives
    raw["canvases"]["browse"]["blend"]["like"] = 1.0  # blends an undeclared objective
    raw["model"]["bottom"] = "transformer"  # not a known bottom
    raw["train"]["epochs"] = "ten"  # wrong type
    raw["train"]["unknown_knob"] = 1  # unknown key
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "bad.toml")
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 6
    for needle in ["'nope'", "search.primary", "browse.blend.like", "model.bottom", "train.epochs", "unknown_knob"]:
        assert needle in problems


def test_fusion_knobs_are_checked():
    raw = _raw()
    raw["train"].update(fusion_margin=-1.0, fusion_cv_repeats=-1, fusion_k=-5)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "bad.toml")
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 3
    for needle in ["train.fusion_margin", "train.fusion_cv_repeats", "train.fusion_k"]:
        assert needle in problems
    raw = _raw()
    raw["train"]["fusion_method"] = "best"
    with pytest.raises(ConfigError, match=r"train\.fusion_method: expected one of 'grid', 'softmax', 'either'"):
        parse_config(raw, "bad.toml")


def test_config_rejects_reserved_and_duplicate_fields():
    raw = _raw()
    raw["context"]["fields"].append({"name": "ts", "kind": "numeric"})
    raw["context"]["fields"].append({"name": "country", "kind": "categorical"})
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert any("reserved" in p for p in info.value.problems)
    assert any("declared twice" in p for p in info.value.problems)


def test_check_config_on_missing_and_malformed_files(tmp_path):
    assert check_config(tmp_path / "nope.toml") == ["file not found"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[project\nname=")
    assert "not valid TOML" in check_config(bad)[0]


def test_new_fields_come_from_config_alone():
    raw = _raw()
    raw["context"]["fields"].append({"name": "age_bucket", "kind": "categorical"})
    raw["canvases"]["home"]["fields"].append("age_bucket")
    schema = ContextSchema.from_config(parse_config(raw))
    assert "age_bucket" in schema.field_names
    assert schema.normalize("home", {"age_bucket": "25-34"})["age_bucket"] == "25-34"


@pytest.fixture
def schema(config):
    return ContextSchema.from_config(config)


def test_normalize_fills_sentinels_and_task_type(schema):
    record = schema.normalize("home", {"user_id": "u1", "country": "DE", "query": "ignored on home"})
    assert record["task_type"] == "home"
    assert record["user_id"] == "u1" and record["country"] == "DE"
    assert record["query"] is None  # home does not use query: sentinel
    assert set(record) == {*schema.field_names, "task_type"}


def test_normalize_imputes_the_source_title_as_query_on_related(schema):
    titles = {"m1": "Galaxy Robot Night"}.get
    record = schema.normalize("related", {"source_item_id": "m1"}, titles=titles)
    assert record["query"] == "Galaxy Robot Night"
    given = schema.normalize("related", {"source_item_id": "m1", "query": "explicit"}, titles=titles)
    assert given["query"] == "explicit"


@pytest.mark.parametrize(
    ("canvas", "context", "field"),
    [
        ("feed", {}, "canvas"),
        ("home", {"shoe_size": "42"}, "shoe_size"),
        ("home", {"hour": "noon"}, "hour"),
        ("home", {"hour": float("nan")}, "hour"),
        ("search", {"query": "x" * 10_000}, "query"),
        ("home", {"user_id": ["a"]}, "user_id"),
    ],
)
def test_normalize_rejects_bad_requests_naming_the_field(schema, canvas, context, field):
    with pytest.raises(RequestError) as info:
        schema.normalize(canvas, context)
    assert info.value.field == field


def test_frame_contract_matches_request_contract(schema):
    """Training rows (vectorized) and requests (one by one) must see the same context."""
    catalogue = pl.DataFrame(
        {"entity_id": ["m1"], "entity_type": ["movie"], "title": ["Galaxy Robot"], "categories": ["scifi"]}
    )
    frame = pl.DataFrame(
        {
            "canvas": ["related", "home", "search"],
            "user_id": ["u1", "u2", "u3"],
            "source_item_id": ["m1", "m1", None],
            "query": [None, "dropped", "robot"],
            "hour": [3.0, 4.0, 5.0],
        }
    )
    out = schema.apply_to_frame(frame, catalogue)
    for row in out.iter_rows(named=True):
        context = {k: row[k] for k in ("user_id", "source_item_id", "query", "hour") if row[k] is not None}
        expected = schema.normalize(
            row["canvas"],
            {**context, "query": frame.filter(pl.col("user_id") == row["user_id"])["query"][0]},
            titles={"m1": "Galaxy Robot"}.get,
        )
        assert {k: row[k] for k in schema.field_names} == {k: expected[k] for k in schema.field_names}


def test_fingerprint_changes_with_the_contract(config):
    a = ContextSchema.from_config(config)
    b = ContextSchema.from_config(dataclasses.replace(config, schema_version=2))
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == ContextSchema.from_config(config).fingerprint()


def test_declaration_order_survives_a_json_round_trip(tmp_path, config):
    """Canvas order defines task_type indices and objective order the label columns: saving a config
    with a model must never reorder them (e.g. by sorting keys)."""
    from monorec.artifacts import read_json, write_json

    write_json(tmp_path / "c.json", config.to_dict())
    again = parse_config(read_json(tmp_path / "c.json"))
    assert again.canvas_names == config.canvas_names == ("home", "related", "search", "browse")
    assert [o.name for o in again.objectives] == [o.name for o in config.objectives]
    assert again == config


def test_id_list_fields():
    raw = _raw()
    raw["context"]["fields"].append({"name": "recent", "kind": "id_list", "vocabulary": "entity", "max_tokens": 3})
    raw["canvases"]["home"]["fields"].append("recent")
    schema = ContextSchema.from_config(parse_config(raw))
    assert schema.normalize("home", {"recent": ["m1", "m2", "m3", "m4"]})["recent"] == "m2|m3|m4"  # most recent
    assert schema.normalize("home", {"recent": "m1|m2"})["recent"] == "m1|m2"
    with pytest.raises(RequestError) as info:
        schema.normalize("home", {"recent": [{"id": 1}]})
    assert info.value.field == "recent"
    raw["context"]["fields"].append({"name": "bad_list", "kind": "id_list"})
    with pytest.raises(ConfigError, match="needs a shared vocabulary"):
        parse_config(raw)


def test_environments_are_validated_with_every_problem_named():
    raw = _raw()
    raw["environments"] = {
        "bad": {
            "canvases": ["home", "nowhere"],
            "mode": "precomputed",
            "max_k": 500,
            "worker_threads": 0,
            "gil_switch_interval_ms": 0,
            "precompute": {"home": "query"},
            "rules": {"ghost": {"max_per_category": 2}, "home": {"boost_types": {"movie": -1.0}}},
            "latency_budget": 10,
        }
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    text = "\n".join(info.value.problems)
    for expected in (
        "environments.bad: unknown canvas 'nowhere'",
        "environments.bad.worker_threads: must be >= 1",
        "environments.bad.gil_switch_interval_ms: must be > 0",
        "environments.bad.retrieval_depth: must be >= max_k (500)",
        "environments.bad.precompute.home: 'query' is not a field of canvas 'home'",
        "environments.bad.rules.ghost: unknown canvas",
        "environments.bad.rules.home: boost factors must be > 0",
        "environments.bad.latency_budget: unknown key",
    ):
        assert expected in text, expected


def test_environments_round_trip_and_unknown_names_are_refused():
    cfg = load_config(default_config("synthetic"))
    assert {"default", "prod", "batch"} <= set(cfg.environments)
    assert cfg.environment("prod").rules_for("home").max_per_category == 3
    assert cfg.environment("batch").precompute == {
        "home": "user_id",
        "related": "source_item_id",
        "browse": "category",
    }
    with pytest.raises(ConfigError, match="staging: unknown environment"):
        cfg.environment("staging")
    bare = dataclasses.replace(cfg, environments={})
    assert bare.environment("default").mode == "online"  # a config without environments still serves


def test_an_environments_file_of_its_own(tmp_path):
    from monorec.environments import load_environments

    canvases = {c.name: c.fields for c in load_config(default_config("synthetic")).canvases}
    good = tmp_path / "envs.toml"
    good.write_text('[environments.edge]\ncanvases = ["home"]\n[environments.edge.rules.home]\npins = { m1 = 0 }\n')
    envs = load_environments(good, canvases)
    assert envs["edge"].canvases == ("home",) and envs["edge"].rules_for("home").pins == {"m1": 0}
    bad = tmp_path / "bad.toml"
    bad.write_text('[environments.edge]\ncanvases = ["nowhere"]\nmax_batch = 0\n')
    with pytest.raises(ConfigError) as info:
        load_environments(bad, canvases)
    assert len(info.value.problems) == 2
    with pytest.raises(ConfigError, match="file not found"):
        load_environments(tmp_path / "missing.toml", canvases)
