import json
import os

import pytest
import torch

from monorec.bundle import ModelBundle
from monorec.errors import ArtifactError, GateError, RegistryError
from monorec.evaluation.gate import compare_reports
from monorec.registry import Registry

REQUESTS = 400


def _values(mean: float) -> list[float]:
    """Per-request 0/1 values with the given mean; two of them are paired request by request."""
    return [1.0 if i < round(mean * REQUESTS) else 0.0 for i in range(REQUESTS)]


def _canvas(recall: float, ndcg: float, fingerprint: str = "same-requests") -> dict:
    return {
        "recall@10": sum(_values(recall)) / REQUESTS,
        "ndcg@10": sum(_values(ndcg)) / REQUESTS,
        "requests": REQUESTS,
        "requests_fingerprint": fingerprint,
        "per_request": {"recall@10": _values(recall), "ndcg@10": _values(ndcg)},
    }


def _report(recall, ndcg=0.1, *, model=None, fingerprint="same-requests"):
    report = {"k": 10, "split": "test", "canvases": {"home": _canvas(recall, ndcg, fingerprint)}}
    if model is not None:
        report["model"] = {"checksum": model.checksum()}
    return report


def test_bundle_round_trip_gives_identical_predictions(tmp_path, trained, prepared):
    path = trained.save(tmp_path / "run")
    loaded = ModelBundle.load(path)
    ctx_rows = prepared.rows("test").head(16)
    for b in (trained, loaded):
        b.model.eval()
    ea = trained.item_embeddings(prepared.catalogue)[1]
    eb = loaded.item_embeddings(prepared.catalogue)[1]
    torch.testing.assert_close(ea, eb)
    fa = trained.featurizer.transform_context(ctx_rows)
    fb = loaded.featurizer.transform_context(ctx_rows)
    ca = trained.model.encode_context({k: torch.as_tensor(v) for k, v in fa.items()})[1]
    cb = loaded.model.encode_context({k: torch.as_tensor(v) for k, v in fb.items()})[1]
    torch.testing.assert_close(ca, cb)
    assert loaded.config == trained.config


def test_weights_are_safetensors_not_pickles(tmp_path, trained):
    path = trained.save(tmp_path / "run")
    header = (path / "model.safetensors").read_bytes()[:8]
    assert int.from_bytes(header, "little") < 10_000_000  # safetensors: an 8-byte JSON header length
    assert not any(p.suffix in (".pt", ".pkl", ".pickle", ".bin") for p in path.iterdir())


def test_corrupt_or_missing_files_fail_loudly(tmp_path, trained):
    path = trained.save(tmp_path / "run")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        ModelBundle.load(path)
    weights.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        ModelBundle.load(path)


def test_registry_versions_are_immutable_and_numbered(tmp_path, trained):
    reg = Registry(tmp_path / "reg")
    v1 = reg.publish(trained, _report(0.2, model=trained))
    v2 = reg.publish(trained, _report(0.25, model=trained))
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.live() == "v0002"
    assert [v.version for v in reg.versions()] == ["v0001", "v0002"]
    assert reg.versions()[1].parent == "v0001"
    assert reg.metrics(v1)["canvases"]["home"]["recall@10"] == 0.2
    files = list(reg.path(v1).iterdir())
    assert files and all(not os.access(f, os.W_OK) or os.geteuid() == 0 for f in files)
    assert all((f.stat().st_mode & 0o222) == 0 for f in files)  # read-only bits
    with pytest.raises(ArtifactError, match="immutable"):
        trained.save(reg.path(v1), overwrite=False)
    reg.verify(v1)
    loaded = reg.load(v1)
    assert loaded.meta["version"] == v1 and "version" not in trained.meta  # the caller's bundle is untouched
    with pytest.raises(RegistryError):
        reg.load("v9999")
    with pytest.raises(RegistryError):
        reg.set_live("v9999")


def test_registry_gate_refuses_a_regression(tmp_path, trained):
    reg = Registry(tmp_path / "reg")
    reg.publish(trained, _report(0.30, model=trained))
    with pytest.raises(GateError) as info:
        reg.publish(trained, _report(0.20, model=trained), tolerance=0.05)
    assert "home recall@10" in str(info.value) and "worse" in str(info.value)
    assert reg.live() == "v0001" and len(reg.versions()) == 1
    assert reg.publish(trained, _report(0.295, model=trained), tolerance=0.05) == "v0002"  # within noise
    assert reg.publish(trained, _report(0.10, model=trained), tolerance=0.05, force=True) == "v0003"


def test_publish_refuses_metrics_of_another_model_or_other_requests(tmp_path, trained, config, prepared):
    """Regression (issue 10.3): publish accepted any metrics JSON, and the gate compared reports of
    different splits, data or request samples."""
    import dataclasses

    from monorec.evaluation.compare import NotComparable
    from monorec.train import train

    reg = Registry(tmp_path / "reg")
    other = train(
        dataclasses.replace(config, train=dataclasses.replace(config.train, seed=7)), prepared, progress=False
    )
    with pytest.raises(RegistryError, match="computed for model"):
        reg.publish(trained, _report(0.3, model=other))
    with pytest.raises(RegistryError, match="no model checksum"):
        reg.publish(trained, _report(0.3))
    assert reg.publish(trained, _report(0.3, model=trained)) == "v0001"
    with pytest.raises(NotComparable, match="different requests"):
        reg.publish(trained, _report(0.4, model=trained, fingerprint="another-sample"))
    assert len(reg.versions()) == 1


def test_gate_compares_canvas_by_canvas_with_paired_intervals():
    base = {"k": 10, "canvases": {"home": _canvas(0.3, 0.2), "search": _canvas(0.5, 0.4)}}
    better = json.loads(json.dumps(base))
    better["canvases"]["home"] = _canvas(0.35, 0.2)
    result = compare_reports(better, base, tolerance=0.0)
    assert result.passed and result.rows[0]["verdict"] == "better" and result.rows[0]["ci95"][0] > 0
    worse = json.loads(json.dumps(base))
    worse["canvases"]["search"] = _canvas(0.5, 0.36)
    result = compare_reports(worse, base, tolerance=0.05)
    assert not result.passed and len(result.regressions) == 1
    # four claims (two canvases x two metrics): decided on the 1 - 0.05/4 interval
    assert result.regressions[0].startswith("search ndcg@10: 0.3600 vs 0.4000 (delta -0.0400, 98.75% CI [")
    row = next(r for r in result.rows if not r["ok"])
    assert row["ci_family"][0] <= row["ci95"][0] and row["ci95"][1] <= row["ci_family"][1]
    assert compare_reports(worse, base, tolerance=0.2).passed  # significant, but within a 20% tolerance
    noise = json.loads(json.dumps(base))
    noise["canvases"]["search"] = _canvas(0.5, 0.3975)  # one request of 400 differs
    row = next(
        r
        for r in compare_reports(noise, base, tolerance=0.0).rows
        if r["metric"] == "ndcg@10" and r["canvas"] == "search"
    )
    assert row["verdict"] == "not significant" and row["ok"]
    missing = {"k": 10, "canvases": {"home": base["canvases"]["home"]}}
    assert not compare_reports(missing, base, tolerance=1.0).passed


def test_paired_bootstrap_interval_covers_the_truth():
    """The 95% interval of a known mean difference covers it in about 95% of seeded repetitions."""
    import numpy as np

    from monorec.evaluation.compare import paired_bootstrap

    rng = np.random.default_rng(0)
    covered = 0
    for seed in range(100):
        base = rng.binomial(1, 0.3, 300).astype(float)
        cand = np.where(rng.random(300) < 0.1, 1 - base, base)  # true difference: 0.1 * (1 - 2 * 0.3) = 0.04
        diff = paired_bootstrap(cand, base, samples=500, seed=seed)
        covered += diff.low <= 0.04 <= diff.high
    assert 88 <= covered <= 99


def test_the_gate_rarely_refuses_an_equally_good_model():
    """Two models of the same quality measured on the same requests (independent per-request noise): the
    gate's family-wise decision refuses at most about 5% of such pairs over four canvases and two metrics,
    where deciding each claim at 95% would refuse several times as many."""
    import numpy as np

    rng = np.random.default_rng(0)

    def canvas(values_r, values_n):
        return {
            "recall@10": float(values_r.mean()),
            "ndcg@10": float(values_n.mean()),
            "requests": len(values_r),
            "requests_fingerprint": "same",
            "per_request": {"recall@10": values_r.tolist(), "ndcg@10": values_n.tolist()},
        }

    def report():
        out = {}
        for c in ("home", "related", "search", "browse"):
            hits = rng.binomial(1, 0.1, 300).astype(float)
            out[c] = canvas(hits, hits * rng.uniform(0.3, 1.0, 300))
        return {"k": 10, "canvases": out}

    refused = plain_refused = 0
    for _ in range(60):
        a, b = report(), report()
        result = compare_reports(a, b, tolerance=0.0)
        refused += not result.passed
        plain_refused += any(r["ci95"][1] < 0 for r in result.rows)
    assert refused <= 6 and plain_refused > refused


def test_runs_are_averaged_request_by_request_and_only_on_the_same_requests():
    from monorec.evaluation.compare import NotComparable, average_over_runs

    def run(recall: list[float], fingerprint: str = "f") -> dict:
        per = {"recall@10": recall, "ndcg@10": [r / 2 for r in recall], "cold": [1, 0, 0, 0]}
        canvas = {"recall@10": sum(recall) / 4, "ndcg@10": sum(recall) / 8, "requests": 4}
        return {"k": 10, "canvases": {"home": {**canvas, "per_request": per, "requests_fingerprint": fingerprint}}}

    a, b = run([1.0, 0.0, 1.0, 0.0]), run([0.0, 0.0, 1.0, 1.0])
    home = average_over_runs([a, b], ["recall@10", "ndcg@10"])["canvases"]["home"]
    assert home["per_request"]["recall@10"] == [0.5, 0.0, 1.0, 0.5]
    assert home["recall@10"] == 0.5 and home["ndcg@10"] == 0.25
    assert home["cold"]["recall@10"] == 0.5 and home["warm"]["recall@10"] == 0.5 and home["warm"]["requests"] == 3
    assert [r["recall@10"] for r in home["per_run"]] == [0.5, 0.5]
    with pytest.raises(NotComparable, match="different requests"):
        average_over_runs([a, run([1.0, 1.0, 1.0, 1.0], fingerprint="g")], ["recall@10"])
