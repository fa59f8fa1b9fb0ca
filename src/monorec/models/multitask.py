"""Multi-task bottoms: every bottom maps (B, F) inputs to one representation per task, (T, B, H).

- SharedBottom: one MLP shared by every task (Caruana 1997).
- MMoE: E shared experts, one softmax gate per task (Ma et al., KDD 2018).
- PLE: progressive layered extraction; per level, shared experts plus experts owned by each task,
  per-task gates over (own + shared) experts and a shared gate over all (Tang et al., RecSys 2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import torch
from torch import nn

from monorec.models.layers import MLP

__all__ = ["PLE", "MMoE", "MultiTaskBottom", "SharedBottom", "TaskTowers", "build_bottom"]


class MultiTaskBottom(Protocol):
    """(B, F) -> (T, B, out_dim); ``own_task``: (B, F), task (B,) -> (B, out_dim), each row's own task's."""

    out_dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def own_task(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor: ...

    def input_layers(self) -> list[tuple[nn.Module, str]]: ...


def _own(every: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """(T, B, H), task (B,) -> (B, H): each row's own task's slice, without a data-dependent branch."""
    return every.gather(0, task[None, :, None].expand(1, -1, every.shape[2])).squeeze(0)


class SharedBottom(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int], n_tasks: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden, dropout=dropout)
        self.n_tasks = n_tasks
        self.out_dim = self.mlp.out_dim

    def input_layers(self) -> list[tuple[nn.Module, str]]:
        """The linear layers that read the bottom's input, as (parent module, attribute name)."""
        return [(self.mlp, "0")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)  # (B, H)
        return h.unsqueeze(0).expand(self.n_tasks, -1, -1)  # (T, B, H)

    def own_task(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.mlp(x))  # every task's view is the same


def _mix(experts: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    """experts (E, B, H), gate logits (..., B, E) -> (..., B, H)."""
    weights = torch.softmax(gate_logits, dim=-1)
    return torch.einsum("...be,ebh->...bh", weights, experts)


class MMoE(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int], n_tasks: int, n_experts: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.experts = nn.ModuleList(MLP(in_dim, hidden, dropout=dropout) for _ in range(n_experts))
        self.gates = nn.Linear(in_dim, n_tasks * n_experts)
        self.n_tasks, self.n_experts = n_tasks, n_experts
        self.out_dim: int = MLP(1, hidden).out_dim

    def input_layers(self) -> list[tuple[nn.Module, str]]:
        """The linear layers that read the bottom's input, as (parent module, attribute name)."""
        return [(e, "0") for e in self.experts] + [(self, "gates")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = torch.stack([e(x) for e in self.experts])  # (E, B, H)
        gates = self.gates(x).view(x.shape[0], self.n_tasks, self.n_experts).transpose(0, 1)  # (T, B, E)
        return _mix(experts, gates)  # (T, B, H)

    def own_task(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Only each row's own gate mixes the experts: 1/T of :meth:`forward`'s mixing (a quarter of the
        exported ranker's time went to mixing for every task on 1,600 pairs, 2.1 of 8.6 ms)."""
        experts = [e(x) for e in self.experts]  # E x (B, H)
        gates = self.gates(x).view(x.shape[0], self.n_tasks, self.n_experts)  # (B, T, E)
        own = gates.gather(1, task[:, None, None].expand(-1, 1, self.n_experts)).squeeze(1)  # (B, E)
        weights = torch.softmax(own, dim=-1)
        out = weights[:, 0:1] * experts[0]
        for e in range(1, self.n_experts):
            out = out + weights[:, e : e + 1] * experts[e]
        return out


class _CGCLevel(nn.Module):
    """One PLE level (customized gate control)."""

    def __init__(
        self, in_dim: int, hidden: Sequence[int], n_tasks: int, n_shared: int, n_own: int, last: bool, dropout: float
    ) -> None:
        super().__init__()
        self.shared = nn.ModuleList(MLP(in_dim, hidden, dropout=dropout) for _ in range(n_shared))
        self.own = nn.ModuleList(
            nn.ModuleList(MLP(in_dim, hidden, dropout=dropout) for _ in range(n_own)) for _ in range(n_tasks)
        )
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, n_shared + n_own) for _ in range(n_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, n_shared + n_tasks * n_own)
        self.out_dim: int = MLP(1, hidden).out_dim

    def forward(self, task_inputs: torch.Tensor, shared_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """task_inputs (T, B, F), shared_input (B, F) -> ((T, B, H), (B, H))."""
        shared = [e(shared_input) for e in self.shared]  # E_s x (B, H)
        outs, all_own = [], []
        for t, (experts, gate) in enumerate(zip(self.own, self.task_gates, strict=True)):
            own = [e(task_inputs[t]) for e in cast(nn.ModuleList, experts)]
            all_own += own
            outs.append(_mix(torch.stack(own + shared), gate(task_inputs[t])))
        task_out = torch.stack(outs)  # (T, B, H)
        if self.shared_gate is None:
            return task_out, shared_input
        return task_out, _mix(torch.stack(shared + all_own), self.shared_gate(shared_input))


class PLE(nn.Module):
    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        n_tasks: int,
        n_shared: int,
        n_own: int,
        levels: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        dim = in_dim
        for i in range(levels):
            level = _CGCLevel(dim, hidden, n_tasks, n_shared, n_own, last=i == levels - 1, dropout=dropout)
            self.levels.append(level)
            dim = level.out_dim
        self.n_tasks = n_tasks
        self.out_dim = dim

    def input_layers(self) -> list[tuple[nn.Module, str]]:
        """The linear layers that read the bottom's input (the first level's), as (parent module, attribute
        name)."""
        first = cast(_CGCLevel, self.levels[0])
        layers: list[tuple[nn.Module, str]] = [(e, "0") for e in first.shared]
        layers += [(e, "0") for own in first.own for e in cast(nn.ModuleList, own)]
        layers += [(first.task_gates, str(t)) for t in range(len(first.task_gates))]
        if first.shared_gate is not None:
            layers.append((first, "shared_gate"))
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        task_inputs, shared = x.unsqueeze(0).expand(self.n_tasks, -1, -1), x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return task_inputs  # (T, B, H)

    def own_task(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return _own(self.forward(x), task)  # a task's own experts feed the next level's shared gate


class TaskTowers(nn.Module):
    """One MLP tower per task with ``n_heads`` outputs: (T, B, H) -> (T, B, n_heads)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], n_tasks: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.towers = nn.ModuleList(MLP(in_dim, hidden, out_dim=n_heads, dropout=dropout) for _ in range(n_tasks))
        self.n_heads = n_heads

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([tower(h[t]) for t, tower in enumerate(self.towers)])

    def gathered(self, h: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """:meth:`for_rows` without data-dependent branches (what an exported graph needs) on each row's own
        task's representation: every tower on every row, then each row's own tower's output; T times the
        towers' work. (B, H) (from ``MultiTaskBottom.own_task``), task (B,) -> (B, n_heads)."""
        return _own(torch.stack([tower(h) for tower in self.towers]), task)

    def for_rows(self, h: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Each row through its own task's tower only: h (T, B, H), task (B,) -> (B, n_heads)."""
        out = h.new_empty(h.shape[1], self.n_heads)
        for t, tower in enumerate(self.towers):
            rows = (task == t).nonzero(as_tuple=True)[0]
            if rows.numel():
                out[rows] = tower(h[t, rows])
        return out


def build_bottom(
    kind: str,
    *,
    in_dim: int,
    hidden: Sequence[int],
    n_tasks: int,
    experts: int = 4,
    task_experts: int = 1,
    levels: int = 2,
    dropout: float = 0.0,
) -> SharedBottom | MMoE | PLE:
    """Turns the config's ``model.bottom`` into a module (flat keyword arguments, no config inside)."""
    if kind == "shared_bottom":
        return SharedBottom(in_dim, hidden, n_tasks, dropout)
    if kind == "mmoe":
        return MMoE(in_dim, hidden, n_tasks, experts, dropout)
    if kind == "ple":
        return PLE(in_dim, hidden, n_tasks, experts, task_experts, levels, dropout)
    raise ValueError(f"unknown bottom {kind!r}; expected shared_bottom, mmoe or ple")
