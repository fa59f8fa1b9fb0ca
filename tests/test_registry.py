import json
import os

import pytest
import torch

from monorec.bundle import ModelBundle
from monorec.errors import ArtifactError, GateError, RegistryError
from monorec.evaluation.gate import compare_reports
from monorec.registry import Registry


def _report(recall, ndcg=0.1):
    return {"k": 10, "split": "test", "canvases": {"home": {"recall@10": recall, "ndcg@10": ndcg, "requests": 5}}}


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
    v1 = reg.publish(trained, _report(0.2))
    v2 = reg.publish(trained, _report(0.25))
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
    reg.publish(trained, _report(0.30))
    with pytest.raises(GateError) as info:
        reg.publish(trained, _report(0.20), tolerance=0.01)
    assert "home recall@10" in str(info.value)
    assert reg.live() == "v0001" and len(reg.versions()) == 1
    assert reg.publish(trained, _report(0.295), tolerance=0.01) == "v0002"  # within tolerance
    assert reg.publish(trained, _report(0.10), tolerance=0.01, force=True) == "v0003"


def test_gate_compares_canvas_by_canvas():
    base = {
        "k": 10,
        "canvases": {"home": {"recall@10": 0.3, "ndcg@10": 0.2}, "search": {"recall@10": 0.5, "ndcg@10": 0.4}},
    }
    better = json.loads(json.dumps(base))
    better["canvases"]["home"]["recall@10"] = 0.35
    assert compare_reports(better, base, tolerance=0.0).passed
    worse = json.loads(json.dumps(base))
    worse["canvases"]["search"]["ndcg@10"] = 0.38
    result = compare_reports(worse, base, tolerance=0.01)
    assert not result.passed and result.regressions == ["search ndcg@10: 0.3800 vs 0.4000 (delta -0.0200)"]
    missing = {"k": 10, "canvases": {"home": base["canvases"]["home"]}}
    assert not compare_reports(missing, base, tolerance=1.0).passed
