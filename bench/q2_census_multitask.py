"""Q2: multi-task bottoms on UCI Census-Income (KDD): Shared-Bottom vs MMoE vs PLE vs single-task AUC.

Tasks (as in the MMoE paper, Sec. 6.3): income > 50K, and marital status "Never married". Only the UCI
test file is available here, so it is split (seeded) 60/20/20 into train/validation/test: results are
NOT comparable with published tables trained on the full training file.

    python bench/q2_census_multitask.py --data ../shared/data/census-income-kdd --out q2.json [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_missing, write_record
from monorec.evaluation.metrics import auc
from monorec.models.multitask import TaskTowers, build_bottom

COLUMNS = [
    "age",
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "wage_per_hour",
    "hs_college",
    "marital_stat",
    "major_ind_code",
    "major_occ_code",
    "race",
    "hisp_origin",
    "sex",
    "union_member",
    "unemp_reason",
    "full_or_part_emp",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "tax_filer_stat",
    "region_prev_res",
    "state_prev_res",
    "det_hh_fam_stat",
    "det_hh_summ",
    "instance_weight",
    "mig_chg_msa",
    "mig_chg_reg",
    "mig_move_reg",
    "mig_same",
    "mig_prev_sunbelt",
    "num_emp",
    "fam_under_18",
    "country_father",
    "country_mother",
    "country_self",
    "citizenship",
    "own_or_self",
    "vet_question",
    "vet_benefits",
    "weeks_worked",
    "year",
    "income_50k",
]
NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"]
DROP = {"instance_weight", "income_50k", "marital_stat"}


def load(path: Path, seed: int, limit: int | None) -> dict[str, dict[str, torch.Tensor]]:
    frame = pl.read_csv(path / "census-income.test.gz", has_header=False, new_columns=COLUMNS, infer_schema_length=0)
    frame = frame.with_columns(pl.col(c).str.strip_chars() for c in COLUMNS)
    y = np.stack(
        [
            frame["income_50k"].str.starts_with("50000+").to_numpy(),
            (frame["marital_stat"] == "Never married").to_numpy(),
        ],
        axis=1,
    ).astype(np.float32)
    categorical = [c for c in COLUMNS if c not in DROP and c not in NUMERIC]
    rng = np.random.default_rng(seed)
    order = rng.permutation(frame.height)[: limit or frame.height]
    n = len(order)
    parts = {"train": order[: int(0.6 * n)], "valid": order[int(0.6 * n) : int(0.8 * n)], "test": order[int(0.8 * n) :]}
    train_rows = frame[parts["train"]]
    cats = []
    for c in categorical:  # vocabularies from the training part only; 0 = unseen
        vocab = {v: i + 1 for i, v in enumerate(sorted(set(train_rows[c].to_list())))}
        cats.append(np.array([vocab.get(v, 0) for v in frame[c].to_list()], dtype=np.int64))
    x_cat = np.stack(cats, axis=1)
    nums = np.log1p(np.stack([frame[c].cast(pl.Float64).to_numpy() for c in NUMERIC], axis=1).clip(min=0))
    mean, std = nums[parts["train"]].mean(axis=0), nums[parts["train"]].std(axis=0) + 1e-6
    x_num = ((nums - mean) / std).astype(np.float32)
    sizes = (x_cat[parts["train"]].max(axis=0) + 2).tolist()
    out = {}
    for name, idx in parts.items():
        out[name] = {
            "cat": torch.as_tensor(x_cat[idx]),
            "num": torch.as_tensor(x_num[idx]),
            "y": torch.as_tensor(y[idx]),
        }
    out["meta"] = {"sizes": torch.as_tensor(sizes)}
    return out


class CensusModel(nn.Module):
    """Embeddings + numeric -> a monorec multi-task bottom -> one tower (one logit) per task."""

    def __init__(self, sizes: list[int], n_numeric: int, bottom: str, n_tasks: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, 4) for n in sizes)
        in_dim = 4 * len(sizes) + n_numeric
        self.bottom = build_bottom(
            bottom, in_dim=in_dim, hidden=[64], n_tasks=n_tasks, experts=8, task_experts=2, levels=2
        )
        self.towers = TaskTowers(self.bottom.out_dim, [32], n_tasks, n_heads=1)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        x = torch.cat([e(cat[:, i]) for i, e in enumerate(self.embeddings)] + [num], dim=1)
        return self.towers(self.bottom(x))[..., 0].T  # (B, T)


def fit(data, bottom: str, tasks: list[int], epochs: int, seed: int) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    sizes = data["meta"]["sizes"].tolist()
    model = CensusModel(sizes, data["train"]["num"].shape[1], bottom, len(tasks))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    tr = data["train"]
    gen = torch.Generator().manual_seed(seed)
    best, best_state, started = -1.0, None, time.perf_counter()

    def scores(part):
        model.eval()
        with torch.no_grad():
            logits = model(data[part]["cat"], data[part]["num"])
        return [auc(data[part]["y"][:, t].numpy(), logits[:, j].numpy()) for j, t in enumerate(tasks)]

    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(tr["y"]), generator=gen).split(1024):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(tr["cat"][idx], tr["num"][idx]), tr["y"][idx][:, tasks]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = float(np.mean(scores("valid")))
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    return scores("test"), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/census-income-kdd")
    p.add_argument("--out", default="q2.json")
    p.add_argument("--quick", action="store_true", help="10k rows, 1 epoch (CI)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    if data_missing(Path(args.data) / "census-income.test.gz", "census-income.test.gz"):
        return
    epochs, seeds = (1, 1) if args.quick else (args.epochs, args.seeds)
    results: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        data = load(Path(args.data), seed, 10_000 if args.quick else None)
        for bottom in ("shared_bottom", "mmoe", "ple"):
            (income, marital), secs = fit(data, bottom, [0, 1], epochs, seed)
            r = results.setdefault(bottom, {"income_auc": [], "marital_auc": [], "seconds": []})
            r["income_auc"].append(income)
            r["marital_auc"].append(marital)
            r["seconds"].append(secs)
        (income,), s1 = fit(data, "shared_bottom", [0], epochs, seed)
        (marital,), s2 = fit(data, "shared_bottom", [1], epochs, seed)
        r = results.setdefault("single_task", {"income_auc": [], "marital_auc": [], "seconds": []})
        r["income_auc"].append(income)
        r["marital_auc"].append(marital)
        r["seconds"].append(s1 + s2)
    summary = {
        name: {f"{k}_mean": float(np.mean(v)) for k, v in r.items()}
        | {f"{k}_std": float(np.std(v)) for k, v in r.items()}
        for name, r in results.items()
    }
    for name, s in summary.items():
        print(
            f"{name:>14}: income AUC {s['income_auc_mean']:.4f}±{s['income_auc_std']:.4f}  "
            f"marital AUC {s['marital_auc_mean']:.4f}±{s['marital_auc_std']:.4f}  ({s['seconds_mean']:.1f}s)"
        )
    write_record(
        args.out,
        {
            "benchmark": "Q2",
            "quick": args.quick,
            "data": args.data,
            "seeds": seeds,
            "epochs": epochs,
            "split": "test file, seeded 60/20/20",
            "results": results,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
