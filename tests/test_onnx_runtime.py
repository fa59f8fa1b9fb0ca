"""The model path through ONNX Runtime (``model_runtime = "onnx"``): a version's exported context tower and
ranker equal its PyTorch forwards on every canvas (max abs diff <= 1e-5), the engine answers the same
entities in the same order through either runtime, and a version without an export is served by PyTorch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from monorec.bundle import context_tensors
from monorec.config import SOURCE_NAMES
from monorec.deployment import Deployment
from monorec.errors import ArtifactError
from monorec.models.graphs import CONTEXT_FILE, RANKER_FILE
from monorec.models.onnx_model import OnnxModel
from monorec.registry import Registry
from monorec.serving.messages import RecommendRequest
from serving_fixtures import deployed, engine_for

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, two_versions: Registry) -> Registry:
    """v0001 of the tiny model published again with its ONNX export (v0001 here), and without (v0002)."""
    registry = Registry(tmp_path_factory.mktemp("onnx-registry"))
    bundle = two_versions.load("v0001")
    # every canvas fuses every source with its own weight, so the graph's ranking score must carry them
    weights = [[0.5 + t, 1.0, 0.25 * t, 2.0] for t in range(len(bundle.config.canvas_names))]
    bundle.model.source_weights.copy_(torch.tensor(weights))
    bundle.model_kwargs["source_weights"] = weights
    registry.publish(bundle, {"canvases": {}}, force=True, export_onnx=True)
    registry.publish(two_versions.load("v0002"), {"canvases": {}}, force=True)
    return registry


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, exported: Registry, prepared) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    d = deployed(tmp_path_factory.mktemp("onnx-serve") / "dep", exported, prepared.catalogue)
    yield d
    d.close()


def test_publish_exports_both_graphs_under_the_manifest(exported: Registry) -> None:
    folder = exported.path("v0001")
    assert (folder / CONTEXT_FILE).stat().st_size > 0 and (folder / RANKER_FILE).stat().st_size > 0
    assert not OnnxModel.exported(exported.path("v0002"))
    exported.verify("v0001")  # the export is covered by the version's checksums


def test_the_exported_graphs_have_no_control_flow(exported: Registry) -> None:
    # ONNX Runtime runs a Loop's body node by node per iteration: the exporter's embedding_bag (a loop over
    # rows around a loop over ids) took 40% of the served context tower's time (0.37 -> 0.21 ms a request)
    import onnx

    for name in (CONTEXT_FILE, RANKER_FILE):
        graph = onnx.load(str(exported.path("v0001") / name)).graph
        assert not {n.op_type for n in graph.node} & {"Loop", "If", "Scan"}, name


def test_the_export_equals_the_pytorch_forward_on_every_canvas(exported: Registry, prepared) -> None:  # type: ignore[no-untyped-def]
    bundle = exported.load("v0001")
    assert bundle.folder is not None
    onnx, model = OnnxModel(bundle.folder), bundle.model
    fields = [*bundle.schema.field_names, "task_type"]
    generator = torch.Generator().manual_seed(0)
    for canvas, rows in prepared.canvases.items():
        records = rows.head(24).select(fields).to_dicts()  # real requests: histories, queries, unknown ids
        ctx = context_tensors(bundle.featurizer.transform_records(records))
        with torch.no_grad():
            want_feats, want_emb = model.encode_context(ctx)
        got_feats, got_emb = onnx.encode_context(ctx)
        assert (got_feats - want_feats).abs().max() <= TOLERANCE, canvas
        assert (got_emb - want_emb).abs().max() <= TOLERANCE, canvas
        # every request against 7 catalogue entities, with source scores where some source proposed them
        items = prepared.catalogue.head(7)
        item_feats, item_emb = bundle.item_embeddings(items)
        n = len(records)
        proposed = torch.rand(n * 7, 1, generator=generator) > 0.5  # some pairs with source scores, some without
        sources = proposed * torch.rand(n * 7, len(SOURCE_NAMES), generator=generator)
        owner, pairs = _every_pair((want_feats, want_emb), (item_feats, item_emb), ctx["task_type"])
        with torch.no_grad():
            want = model.rank(*pairs, sources)
        # the graph takes each request's context once (and which request each pair is), and also returns the
        # ranking score: the canvas's blend, column 0 of the source scores set to the retrieval score
        scores, logits = onnx.rank(want_feats, want_emb, owner, *pairs[2:], sources)
        assert (torch.from_numpy(logits) - want).abs().max() <= TOLERANCE, canvas
        with_retrieval = sources.clone()
        with_retrieval[:, 0] = (pairs[1] * pairs[3]).sum(dim=1)
        want_scores = model.blend_scores(want, pairs[4], with_retrieval)
        assert (torch.from_numpy(scores) - want_scores).abs().max() <= TOLERANCE, canvas


def test_the_engine_answers_the_same_through_either_runtime(dep: Deployment, prepared) -> None:  # type: ignore[no-untyped-def]
    some_item = prepared.catalogue["entity_id"][3]
    requests = [
        RecommendRequest(canvas="home", context={"user_id": "u1", "history": [some_item]}),
        RecommendRequest(canvas="related", context={"source_item_id": some_item}),
        RecommendRequest(canvas="search", context={"query": "space wedding"}),
        RecommendRequest(canvas="browse", context={"category": "drama", "user_id": "u2"}),
    ]
    assert dep.router.current is not None and dep.router.current.onnx is not None
    with engine_for(dep) as torch_engine, engine_for(dep, model_runtime="onnx") as onnx_engine:
        for request in requests:
            want, got = torch_engine.recommend(request), onnx_engine.recommend(request)
            assert got.source == want.source == "model"
            assert [i.entity_id for i in got.items] == [i.entity_id for i in want.items], request.canvas
            for a, b in zip(got.items, want.items, strict=True):
                assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-4)


def test_a_versions_own_path_answers_the_same_through_either_runtime(dep: Deployment, prepared) -> None:  # type: ignore[no-untyped-def]
    # Version.recommend (one request, no engine: what B5 drives in process) takes the runtime too
    version = dep.router.current
    assert version is not None and version.onnx is not None
    some_item = prepared.catalogue["entity_id"][5]
    for canvas, context in (("home", {"user_id": "u3", "history": [some_item]}), ("search", {"query": "space"})):
        want = version.recommend(canvas, context, k=10)
        got = version.recommend(canvas, context, k=10, runtime="onnx")
        assert got.ids == want.ids and len(got.ids) == 10, canvas
        assert got.scores == pytest.approx(want.scores, rel=1e-5, abs=1e-4), canvas


def test_a_version_without_an_export_is_served_by_pytorch(dep: Deployment) -> None:
    dep.deploy("v0002")
    try:
        version = dep.router.current
        assert version is not None and version.name == "v0002" and version.onnx is None
        assert version.runtime("onnx") is version.bundle.model
        with engine_for(dep, model_runtime="onnx") as engine:
            answer = engine.recommend(RecommendRequest(canvas="search", context={"query": "space"}))
        assert answer.source == "model" and answer.version == "v0002"
    finally:
        dep.rollback()


def test_a_corrupt_export_fails_loudly(tmp_path: Path, exported: Registry) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / CONTEXT_FILE).write_bytes(b"not an onnx graph")
    (folder / RANKER_FILE).write_bytes((exported.path("v0001") / RANKER_FILE).read_bytes())
    with pytest.raises(ArtifactError, match="does not load in ONNX Runtime"):
        OnnxModel(folder)
    # a ranker graph of another shape (an older export): named, with what to do
    (folder / CONTEXT_FILE).write_bytes((exported.path("v0001") / CONTEXT_FILE).read_bytes())
    (folder / RANKER_FILE).write_bytes((exported.path("v0001") / CONTEXT_FILE).read_bytes())
    with pytest.raises(ArtifactError, match="publish the version again"):
        OnnxModel(folder)
    (folder / CONTEXT_FILE).unlink()
    with pytest.raises(ArtifactError, match="published without its ONNX export"):
        OnnxModel(folder)


def test_the_environment_knob_is_validated() -> None:
    from monorec._typed_tables import Problems
    from monorec.environments import parse_environments

    problems = Problems()
    parse_environments({"x": {"model_runtime": "tensorrt"}}, {"home": ("user_id",)}, problems)
    assert any("model_runtime" in item for item in problems.items)


@pytest.mark.parametrize(
    ("bottom", "matches"), [("shared_bottom", False), ("mmoe", True), ("ple", False), ("ple", True)]
)
def test_every_bottom_exports_equal_to_its_pytorch_forward(tmp_path: Path, config, prepared, bottom, matches) -> None:  # type: ignore[no-untyped-def]
    """The export of each multi-task bottom (its first layers take each request's context share once in
    the graph), and of ``model.text_match`` and ``model.category_match`` (the query's match with the title,
    the browsed category's with the entity's, zero where a context has neither): the same logits as PyTorch
    on requests with and without a query or a category."""
    import dataclasses

    from monorec.data.features import Featurizer
    from monorec.models.graphs import export_onnx
    from monorec.models.model import build_model, model_kwargs

    spec = dataclasses.replace(config.model, bottom=bottom, text_match=matches, category_match=matches)
    cfg = dataclasses.replace(config, model=spec)
    fz = Featurizer(cfg).fit(prepared.rows("train"), prepared.catalogue)
    torch.manual_seed(0)
    model = build_model(model_kwargs(cfg, fz)).eval()
    with torch.no_grad():
        model.tables.text_missing.normal_(std=0.05)  # as after training: a learned vector, not zeros
    fields = [f.name for f in cfg.fields] + ["task_type"]
    rows = prepared.rows("test")
    records = [*rows.filter(rows["canvas"] == "search").head(8).select(fields).to_dicts()]
    records += rows.filter(rows["canvas"] == "home").head(8).select(fields).to_dicts()
    records += rows.filter(rows["canvas"] == "browse").head(8).select(fields).to_dicts()
    ctx = context_tensors(fz.transform_records(records))
    export_onnx(model, ctx, tmp_path)
    onnx = OnnxModel(tmp_path)
    items = fz.transform_catalogue(prepared.catalogue.head(5))
    item = {k: torch.as_tensor(getattr(items, k)) for k in ("entity", "entity_type", "categories", "title", "numeric")}
    with torch.no_grad():
        feats, emb = model.encode_context(ctx)
        item_feats, item_emb = model.encode_items(item)
        n = len(records)
        sources = torch.zeros(n * 5, len(SOURCE_NAMES))
        owner, pairs = _every_pair((feats, emb), (item_feats, item_emb), ctx["task_type"])
        want = model.rank(*pairs, sources)
        if matches:  # (N, 1) cosines: nonzero only with a query (the first 8 requests), a category (the last 8)
            matched = model.text_matches(pairs[0], pairs[2])[1]
            assert bool((matched[: 8 * 5] != 0).all()) and bool((matched[8 * 5 :] == 0).all())
            browsed = model.category_matches(pairs[0], pairs[2])[1]
            assert bool((browsed[16 * 5 :] != 0).all()) and bool((browsed[: 16 * 5] == 0).all())
    _, logits = onnx.rank(feats, emb, owner, *pairs[2:], sources)
    assert (torch.from_numpy(logits) - want).abs().max() <= TOLERANCE


def _every_pair(
    contexts: tuple[torch.Tensor, torch.Tensor], items: tuple[torch.Tensor, torch.Tensor], task: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Every (request, entity) pair of B requests ((features, embeddings), task (B,)) and N entities
    ((features, embeddings)), request-major: each pair's request (B * N,), and the PyTorch ranker's first
    five row-aligned (B * N, ...) inputs."""
    (ctx_feats, ctx_emb), (item_feats, item_emb), n = contexts, items, len(items[0])
    b = len(ctx_feats)
    return torch.arange(b).repeat_interleave(n), (
        ctx_feats.repeat_interleave(n, 0),
        ctx_emb.repeat_interleave(n, 0),
        item_feats.repeat(b, 1),
        item_emb.repeat(b, 1),
        task.repeat_interleave(n, 0),
    )
