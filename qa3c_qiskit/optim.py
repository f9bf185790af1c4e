"""Shared Adam over one flat parameter vector, its state (moments *and* step) in shared memory.

The classic pytorch-A3C ``SharedAdam`` kept the step count per process, so each worker applied
its own bias correction; here the step is one shared counter, so the global optimizer is exactly
``torch.optim.Adam`` applied to the sequence of pushed gradients (tested).
"""

from __future__ import annotations

import torch


class SharedAdam:
    """Adam on a flat float64 parameter vector; call ``share_memory()`` before spawning workers."""

    def __init__(
        self,
        params: torch.Tensor,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.92, 0.999),
        eps: float = 1e-8,
    ):
        self.params = params
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.step_count = torch.zeros(1, dtype=torch.int64)

    def share_memory(self) -> SharedAdam:
        for t in (self.params, self.exp_avg, self.exp_avg_sq, self.step_count):
            t.share_memory_()
        return self

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One Adam step of the shared parameters with ``grad`` (not kept: read once)."""
        b1, b2 = self.betas
        self.step_count += 1
        t = int(self.step_count)
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        bias1 = 1 - b1**t
        bias2_sqrt = (1 - b2**t) ** 0.5
        denom = (self.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        self.params.addcdiv_(self.exp_avg, denom, value=-self.lr / bias1)

    def state_dict(self) -> dict:
        """The optimizer's state: moments and step (lr, betas and eps are the run's config)."""
        return {
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "step": int(self.step_count),
        }

    def load_state_dict(self, state: dict) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.step_count.fill_(int(state["step"]))
