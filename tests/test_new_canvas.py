"""A fifth canvas, ``notify`` (user -> the few entities to push), added by config alone: declared in a copy
of the synthetic config, it flows through labels, merge, training, evaluation, the gate, deployment and the
HTTP API with no code change (issue 12)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import httpx
import pytest

from live_server import live_server
from monorec.cli import main
from monorec.deployment import Deployment
from monorec.pipeline import default_config
from monorec.registry import Registry
from monorec.serving.app import ServeSettings, create_app
from toml_writer import to_toml

NOTIFY = {
    "fields": ["user_id", "country", "device", "history"],
    "objectives": ["click"],
    "primary": "click",
    "blend": {"click": 1.0},
    "mix": 0.15,
    "sources": {"embedding": 50, "popular": 20},
}


def run(*args: str) -> int:
    return main(list(args))


@pytest.mark.slow
def test_a_notify_canvas_flows_through_every_stage_by_config_alone(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    raw = tomllib.loads(default_config("synthetic").read_text())
    raw["model"].update(
        {"embedding_dim": 8, "retrieval_dim": 16, "tower_hidden": [16], "expert_hidden": [16], "text_buckets": 2048}
    )
    raw["train"].update({"epochs": 2, "val_requests": 20})
    raw["canvases"]["notify"] = NOTIFY
    cfg = tmp_path / "notify.toml"
    cfg.write_text(to_toml(raw))
    assert run("config", "check", str(cfg)) == 0

    world, prep = tmp_path / "world", tmp_path / "prep"
    args = ("--users", "60", "--items", "80", "--requests", "800", "--notify", "0.2")
    assert run("generate", "--out", str(world), *args) == 0
    assert (world / "logs" / "notify.parquet").exists()
    # labels and the stratified merge
    assert run("prepare", "--data", str(world), "--out", str(prep), "--config", str(cfg)) == 0
    manifest = json.loads((prep / "manifest.json").read_text())
    assert manifest["rows"]["notify"]["train"] > 0 and manifest["rows"]["notify"]["test"] > 0
    assert manifest["mixture"]["notify"]["rows"] > 0
    # training: one model, with a notify tower
    assert run("train", "--prepared", str(prep), "--out", str(tmp_path / "run")) == 0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert "notify" in meta["canvases"]
    # evaluation, per canvas
    evaluate = ("evaluate", "--run", str(tmp_path / "run"), "--prepared", str(prep), "--out", str(tmp_path / "eval"))
    assert run(*evaluate) == 0
    assert "| notify | model |" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["canvases"]["notify"]["requests"] > 0
    # the gate: published, then a candidate worse on notify alone is refused
    registry = tmp_path / "registry"
    publish = ("publish", "--run", str(tmp_path / "run"), "--registry", str(registry), "--metrics")
    assert run(*publish, str(tmp_path / "eval" / "metrics.json")) == 0
    worse = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    notify = worse["canvases"]["notify"]
    assert notify["recall@10"] > 0, "the tiny model found nothing on notify: the refusal below would prove nothing"
    notify["recall@10"], notify["ndcg@10"] = 0.0, 0.0
    notify["per_request"] = {name: [0.0] * len(v) for name, v in notify["per_request"].items()}
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    assert run(*publish, str(tmp_path / "worse.json")) == 1
    assert "notify" in capsys.readouterr().err

    # deployment and the API
    import polars as pl

    catalogue = pl.read_parquet(world / "catalogue.parquet")
    dep = Deployment(tmp_path / "dep", Registry(registry))
    try:
        dep.seed_catalogue(catalogue)
        dep.deploy("v0001")
        app = create_app(ServeSettings(root=tmp_path / "dep", registry=registry, admin_token="t" * 32), deployment=dep)
        with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            body = {"canvas": "notify", "context": {"user_id": "u00001", "country": "US"}, "k": 2}
            r = client.post("/v1/recommend", json=body)
            assert r.status_code == 200, r.text
            data = r.json()
            assert data["version"] == "v0001" and data["source"] == "model" and len(data["items"]) == 2
            assert set(data["items"][0]["predictions"]) == {"click"}
            assert client.post("/v1/recommend", json={**body, "canvas": "nope"}).status_code in (404, 422)
    finally:
        dep.close()
