"""Shared Adam over one flat parameter vector, its state (moments *and* step) in shared memory.

The classic pytorch-A3C ``SharedAdam`` kept the step count per process, so each worker applied
its own bias correction; here the step is one shared counter, so the global optimizer is exactly
``torch.optim.Adam`` applied to the sequence of pushed gradients (tested).

Crash consistency: a process killed inside :meth:`SharedAdam.step` would leave the moments and
the parameters half-updated. Every step is bracketed by a version counter (odd while the live
state is being written) and followed by a copy of the live state into a backup (with its own
counter, odd while the backup is being written). At most one of the two is ever odd, so
:meth:`SharedAdam.recover` (run by whoever takes the lock next) always finds one consistent copy:
an interrupted step is rolled back to the state after the last completed step (its gradient is
lost, as if its worker had died just before pushing), an interrupted backup is redone.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

LIVE, BACKUP = 0, 1


class SharedAdam:
    """Adam on a flat float64 parameter vector; call ``share_memory()`` before spawning workers.

    Not itself thread/process safe: callers serialise :meth:`step` (the local runner's hub lock,
    the Ray parameter server's one-call-at-a-time actor).
    """

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
        # [live, backup] write counters: odd while that copy is being written
        self.version = torch.zeros(2, dtype=torch.int64)
        self._backup_tensors = [t.clone() for t in self._live()]

    def _live(self) -> list[torch.Tensor]:
        return [self.params, self.exp_avg, self.exp_avg_sq, self.step_count]

    def share_memory(self) -> SharedAdam:
        for t in (*self._live(), self.version, *self._backup_tensors):
            t.share_memory_()
        return self

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One Adam step of the shared parameters with ``grad`` (not kept: read once)."""
        self.version[LIVE] += 1  # odd: live state being written
        self._apply(grad)
        self.version[LIVE] += 1  # even: live state consistent
        self._save_backup()

    @torch.no_grad()
    def step_many(self, grads: torch.Tensor, out: torch.Tensor, rows) -> None:
        """``len(grads)`` Adam steps, one per row of ``grads`` [J, n] in order (exactly
        :meth:`step` J times), copying the parameters after step ``j`` into ``out[rows[j]]``
        (learner ``j``'s own pull). One kernel call and one backup for the lot: an interrupted
        call is rolled back whole, as if its process had died before pushing."""
        n_steps = len(grads)
        if n_steps == 0:
            return
        t0 = int(self.step_count)
        lr_t, bias2_sqrt = map(np.array, zip(*map(self._bias, range(t0 + 1, t0 + n_steps + 1))))
        g = np.ascontiguousarray(grads.detach().numpy(), dtype=np.float64)
        self.version[LIVE] += 1  # odd: live state being written
        _adam_many_kernel(
            self.params.numpy(), self.exp_avg.numpy(), self.exp_avg_sq.numpy(), g,
            out.numpy(), np.asarray(rows, dtype=np.int64), *self.betas, lr_t, bias2_sqrt, self.eps,
        )  # fmt: skip
        self.step_count += n_steps
        self.version[LIVE] += 1  # even: live state consistent
        self._save_backup()

    def _bias(self, t: int) -> tuple[float, float]:
        """Step ``t``'s (lr / (1 - b1^t), sqrt(1 - b2^t)): Adam's bias corrections."""
        b1, b2 = self.betas
        return self.lr / (1 - b1**t), (1 - b2**t) ** 0.5

    def _apply(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.step_count += 1
        lr_t, bias2_sqrt = self._bias(int(self.step_count))
        g = grad.detach().numpy()
        if g.dtype != np.float64 or not g.flags.c_contiguous:
            g = np.ascontiguousarray(g, dtype=np.float64)
        _adam_kernel(  # torch.optim.Adam's update, one fused loop (tested equal to 1e-14)
            self.params.numpy(), self.exp_avg.numpy(), self.exp_avg_sq.numpy(), g,
            b1, b2, lr_t, bias2_sqrt, self.eps,
        )  # fmt: skip

    @torch.no_grad()
    def _save_backup(self) -> None:
        self.version[BACKUP] += 1
        for dst, src in zip(self._backup_tensors, self._live()):
            np.copyto(dst.numpy(), src.numpy())
        self.version[BACKUP] += 1

    def in_progress(self) -> bool:
        """True if a step or a backup was interrupted (a writer died mid-write)."""
        return bool((self.version % 2).any())

    @torch.no_grad()
    def recover(self) -> str | None:
        """Restore a consistent state after an interrupted step or backup (call with the lock
        held); returns what was done, or None if nothing was interrupted."""
        if int(self.version[LIVE]) % 2:
            for dst, src in zip(self._live(), self._backup_tensors):
                dst.copy_(src)
            self.version[LIVE] += 1
            return (
                "an interrupted shared-Adam step was rolled back to step "
                f"{int(self.step_count)} (the last completed one)"
            )
        if int(self.version[BACKUP]) % 2:
            self.version[BACKUP] += 1  # even again before redoing it: _save_backup brackets it
            self._save_backup()
            return "an interrupted shared-Adam backup was redone from the consistent live state"
        return None

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
        self.version.zero_()
        self._save_backup()


@numba.njit(cache=True, nogil=True)
def _adam_kernel(params, exp_avg, exp_avg_sq, grad, b1, b2, lr_t, bias2_sqrt, eps):
    """In place: ``m = lerp(m, g, 1 - b1)``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr_t m / (sqrt(v) / bias2_sqrt + eps)`` (``lr_t = lr / (1 - b1^t)``)."""
    for i in range(params.size):
        g = grad[i]
        m = exp_avg[i] + (1.0 - b1) * (g - exp_avg[i])
        v = exp_avg_sq[i] * b2 + (1.0 - b2) * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        params[i] -= lr_t * m / (math.sqrt(v) / bias2_sqrt + eps)


@numba.njit(cache=True, nogil=True)
def _adam_many_kernel(
    params, exp_avg, exp_avg_sq, grads, out, rows, b1, b2, lr_t, bias2_sqrt, eps
):  # fmt: skip
    """:func:`_adam_kernel` for each row ``j`` of ``grads``, then ``out[rows[j]] = params``."""
    for j in range(grads.shape[0]):
        _adam_kernel(params, exp_avg, exp_avg_sq, grads[j], b1, b2, lr_t[j], bias2_sqrt[j], eps)
        out[rows[j], :] = params
