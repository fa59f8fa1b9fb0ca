import pytest
import torch

from monorec.data.features import Featurizer
from monorec.models.losses import (
    FixedWeighting,
    UncertaintyWeighting,
    masked_objective_losses,
    sampled_softmax_loss,
)
from monorec.models.model import build_model, model_kwargs
from monorec.models.multitask import PLE, MMoE, SharedBottom, TaskTowers, build_bottom

BOTTOMS = {
    "shared_bottom": lambda: SharedBottom(12, [10, 8], n_tasks=3),
    "mmoe": lambda: MMoE(12, [8], n_tasks=3, n_experts=4),
    "ple": lambda: PLE(12, [8], n_tasks=3, n_shared=2, n_own=1, levels=2),
}


@pytest.mark.parametrize("kind", BOTTOMS)
@pytest.mark.parametrize("batch", [1, 7])
def test_bottom_shapes(kind, batch):
    torch.manual_seed(0)
    bottom = BOTTOMS[kind]()
    out = bottom(torch.randn(batch, 12))
    assert out.shape == (3, batch, 8)
    assert bottom.out_dim == 8


@pytest.mark.parametrize("kind", BOTTOMS)
def test_tasks_get_different_representations_except_shared_bottom(kind):
    torch.manual_seed(0)
    out = BOTTOMS[kind]()(torch.randn(5, 12))
    same = torch.allclose(out[0], out[1])
    assert same == (kind == "shared_bottom")


@pytest.mark.parametrize("kind", BOTTOMS)
def test_each_rows_own_task_representation_is_its_slice_of_every_tasks(kind):
    # own_task is what the exported ranker computes (MMoE mixes by the row's own gate only): the same
    # values as the task's slice of the full (T, B, H) output, and the towers on it as for_rows on that
    torch.manual_seed(0)
    bottom = BOTTOMS[kind]()
    x, task = torch.randn(9, 12), torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1])
    every = bottom(x)
    own = bottom.own_task(x, task)
    torch.testing.assert_close(own, every[task, torch.arange(9)])
    towers = TaskTowers(8, [6], n_tasks=3, n_heads=2)
    torch.testing.assert_close(towers.gathered(own, task), towers.for_rows(every, task))


def test_build_bottom_rejects_unknown():
    with pytest.raises(ValueError, match="unknown bottom"):
        build_bottom("transformer", in_dim=4, hidden=[4], n_tasks=2)


def test_towers_for_rows_equals_all_towers_gathered():
    torch.manual_seed(0)
    towers = TaskTowers(8, [6], n_tasks=3, n_heads=2)
    h = torch.randn(3, 9, 8)
    task = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1])
    expected = towers(h)[task, torch.arange(9)]
    torch.testing.assert_close(towers.for_rows(h, task), expected)
    assert towers.for_rows(h[:, :1], task[:1]).shape == (1, 2)


def test_masked_losses_ignore_unobserved_labels():
    logits = torch.tensor([[2.0, 0.5], [-1.0, 3.0], [0.0, -2.0]], requires_grad=True)
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.5], [float("nan"), float("nan")]])
    losses, counts = masked_objective_losses(logits, labels, binary=[True, False])
    assert counts.tolist() == [2, 1]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(losses[0], bce)
    torch.testing.assert_close(losses[1], torch.tensor((3.0 - 1.5) ** 2))
    losses.sum().backward()
    assert logits.grad is not None
    assert logits.grad[2].abs().sum() == 0  # an all-unobserved row gets no gradient
    assert logits.grad[0, 1] == 0


def test_sampled_softmax_matches_a_reference_and_masks_accidental_hits():
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 5), torch.randn(4, 5), torch.randn(3, 5)
    pid, nid = torch.tensor([0, 1, 1, 2]), torch.tensor([7, 1, 9])
    logq = torch.tensor([0.1, 0.2, 0.2, 0.3])
    got = sampled_softmax_loss(q, p, pid, logq, n, nid, 0.5, temperature=0.1)
    rows = []
    for i in range(4):
        cands = [(q[i] @ p[j] / 0.1 - logq[j]) for j in range(4) if j == i or pid[j] != pid[i]]
        cands += [(q[i] @ n[m] / 0.1 - 0.5) for m in range(3) if nid[m] != pid[i]]
        pos = q[i] @ p[i] / 0.1 - logq[i]
        rows.append(torch.logsumexp(torch.stack(cands), 0) - pos)
    torch.testing.assert_close(got, torch.stack(rows).mean())


def test_sampled_softmax_with_hard_negatives_matches_a_reference():
    torch.manual_seed(2)
    q, p, n = torch.randn(3, 5), torch.randn(3, 5), torch.randn(2, 5)
    pid, nid, logq = torch.tensor([0, 1, 2]), torch.tensor([7, 8]), torch.zeros(3)
    hard, hid = torch.randn(3, 2, 5), torch.tensor([[5, 6], [1, 9], [4, 4]])  # row 1's first is its positive
    got = sampled_softmax_loss(q, p, pid, logq, n, nid, 0.3, temperature=0.5, hard=hard, hard_ids=hid, hard_logq=0.7)
    rows = []
    for i in range(3):
        cands = [q[i] @ p[j] / 0.5 for j in range(3)] + [q[i] @ n[m] / 0.5 - 0.3 for m in range(2)]
        cands += [q[i] @ hard[i, h] / 0.5 - 0.7 for h in range(2) if hid[i, h] != pid[i]]
        rows.append(torch.logsumexp(torch.stack(cands), 0) - q[i] @ p[i] / 0.5)
    torch.testing.assert_close(got, torch.stack(rows).mean())


def test_loss_weightings():
    losses, present = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    assert FixedWeighting([1.0, 5.0, 0.5])(losses, present).item() == pytest.approx(2.5)
    uw = UncertaintyWeighting(3)
    assert uw(losses, present).item() == pytest.approx(4.0)  # s = 0: plain sum of present losses
    with torch.no_grad():
        uw.log_vars.fill_(1.0)
    assert uw(losses, present).item() == pytest.approx(4.0 * torch.exp(torch.tensor(-1.0)).item() + 2.0)


@pytest.mark.parametrize("bottom", ["shared_bottom", "mmoe", "ple"])
def test_full_model_forward_batch_of_one_and_blend(config, prepared, bottom):
    import dataclasses

    cfg = dataclasses.replace(config, model=dataclasses.replace(config.model, bottom=bottom))
    fz = Featurizer(cfg).fit(prepared.rows("train"), prepared.catalogue)
    model = build_model(model_kwargs(cfg, fz)).eval()
    rows = prepared.rows("test").head(1)
    ctx = {k: torch.as_tensor(v) for k, v in fz.transform_context(rows).items()}
    items = fz.transform_catalogue(prepared.catalogue)
    item = {
        k: torch.as_tensor(getattr(items, k)[:1]) for k in ("entity", "entity_type", "categories", "title", "numeric")
    }
    ce, ie, logits = model(ctx, item)
    assert ce.shape == (1, cfg.model.retrieval_dim) and ie.shape == ce.shape
    assert logits.shape == (1, len(cfg.objectives))
    torch.testing.assert_close(ce.norm(dim=1), torch.ones(1))
    score = model.blend_scores(logits, ctx["task_type"])
    canvas = cfg.canvas(rows["canvas"][0])
    probs = torch.sigmoid(logits[0])
    expected = sum(canvas.blend.get(o.name, 0.0) * probs[j] for j, o in enumerate(cfg.objectives))
    torch.testing.assert_close(score[0], torch.as_tensor(expected, dtype=torch.float32))


def test_text_match_reads_the_words_a_query_shares_with_a_title(config, prepared):
    """``model.text_match``: the ranker's input gains, per text field of the context, the product and the
    cosine of the query's and the title's mean word embeddings; a query equal to a title matches it
    exactly (cosine 1) and other titles less; a context without a query matches nothing; a model without
    it reads none."""

    import polars as pl

    cfg, fz, model, plain, catalogue, item = _with_match(config, prepared, "text_match", 50)
    text_fields = [f for f in cfg.fields if f.kind == "text"]
    assert text_fields and len(model.text_slices) == len(text_fields)
    rows = prepared.rows("test").filter(pl.col("canvas") == "search").head(1)
    rows = pl.concat([rows] * 50).with_columns(query=pl.lit(catalogue["title"][0]))
    ctx_feats, item_feats = _encoded(model, fz, rows, item)
    matches = model.text_matches(ctx_feats, item_feats)
    assert plain.text_matches(ctx_feats, item_feats) == []
    assert len(matches) == 2 * len(text_fields) and matches[0].shape == (50, cfg.model.embedding_dim)
    cosine = matches[1][:, 0]
    same = catalogue["title"] == catalogue["title"][0]
    torch.testing.assert_close(cosine[0], torch.tensor(1.0))
    assert bool((cosine[torch.as_tensor((~same).to_numpy())] < 0.99).all())
    # a context without the text (its field missing: home has no query) matches nothing, whatever the title
    blank = {k: torch.as_tensor(v) for k, v in fz.transform_context(rows.with_columns(query=pl.lit(None))).items()}
    with torch.no_grad():
        blank_feats, _ = model.encode_context(blank)
        for part in model.text_matches(blank_feats, item_feats):
            assert bool((part == 0).all())


def test_category_match_reads_whether_an_entity_is_in_the_browsed_category(config, prepared):
    """``model.category_match``: per category field of the context, the product and the cosine of the
    field's category embedding and the mean of the entity's; an entity of that one category matches it
    exactly (cosine 1), entities of other categories less; a context without a category matches nothing;
    a model without it reads none."""

    import numpy as np
    import polars as pl

    cfg, fz, model, plain, catalogue, item = _with_match(config, prepared, "category_match", 60)
    category_fields = [f for f in cfg.fields if f.vocabulary == "category" and f.kind in ("id", "categorical")]
    assert category_fields and len(model.category_slices) == len(category_fields)
    browsed = catalogue["categories"].str.split("|").list.first()[0]
    rows = prepared.rows("test").filter(pl.col("canvas") == "browse").head(1)
    rows = pl.concat([rows] * 60).with_columns(category=pl.lit(browsed))
    ctx_feats, item_feats = _encoded(model, fz, rows, item)
    matches = model.category_matches(ctx_feats, item_feats)
    assert plain.category_matches(ctx_feats, item_feats) == []
    cosine = matches[1][:, 0].numpy()
    only = (catalogue["categories"] == browsed).to_numpy()
    member = catalogue["categories"].str.split("|").list.contains(browsed).to_numpy()
    assert only.any() and (~member).any()
    np.testing.assert_allclose(cosine[only], 1.0, rtol=1e-5)
    assert cosine[~member].max() < 0.99
    blank = {k: torch.as_tensor(v) for k, v in fz.transform_context(rows.with_columns(category=pl.lit(None))).items()}
    with torch.no_grad():
        blank_feats, _ = model.encode_context(blank)
        for part in model.category_matches(blank_feats, item_feats):
            assert bool((part == 0).all())


def _with_match(config, prepared, flag: str, n: int):  # type: ignore[no-untyped-def]
    """A model with ``model.<flag>`` on and one without (same featurizer), and the first ``n`` catalogue
    entities featurized for both."""
    import dataclasses

    cfg = dataclasses.replace(config, model=dataclasses.replace(config.model, **{flag: True}))
    fz = Featurizer(cfg).fit(prepared.rows("train"), prepared.catalogue)
    model = build_model(model_kwargs(cfg, fz)).eval()
    plain = build_model(
        model_kwargs(dataclasses.replace(config, model=dataclasses.replace(config.model, **{flag: False})), fz)
    ).eval()
    catalogue = prepared.catalogue.head(n)
    items = fz.transform_catalogue(catalogue)
    item = {k: torch.as_tensor(getattr(items, k)) for k in ("entity", "entity_type", "categories", "title", "numeric")}
    return cfg, fz, model, plain, catalogue, item


def _encoded(model, fz, rows, item):  # type: ignore[no-untyped-def]
    """(context features, item features) of ``rows`` and ``item``; checks the bottom reads the wider input."""
    ctx = {k: torch.as_tensor(v) for k, v in fz.transform_context(rows).items()}
    with torch.no_grad():
        ctx_feats, _ = model.encode_context(ctx)
        item_feats, _ = model.encode_items(item)
        assert model(ctx, item)[2].shape == (rows.height, len(model.objective_is_binary))
    return ctx_feats, item_feats
