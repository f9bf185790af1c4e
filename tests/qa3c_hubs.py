"""The hub protocol of :mod:`qa3c_qiskit.a3c` in one process, for tests of the learner loop.

:class:`SerialHub` does what a ``LocalHub`` does, minus the processes: a shared Adam over the
global parameters, an exact episode budget, the env-step counter and the episode records, and
it records every push. Imported as ``qa3c_hubs`` with ``tests/`` on ``sys.path`` (as
``qa3c_faults``).
"""

from __future__ import annotations

import torch

from qa3c_qiskit.a3c import Hub
from qa3c_qiskit.optim import SharedAdam


class SerialHub(Hub):
    """The hub protocol in one process (what a LocalHub does, minus the processes), recording
    every episode record and every push: (the pushing learner's theta' storage address, theta'
    before, the gradient, the global params after)."""

    def __init__(self, flat: torch.Tensor, budget: int, lr: float = 5e-3):
        self.adam = SharedAdam(flat.clone(), lr=lr)
        self.budget, self.claimed, self.steps = budget, 0, 0
        self.records: list[dict] = []
        self.pushes: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def claim_episode(self) -> bool:
        if self.claimed >= self.budget:
            return False
        self.claimed += 1
        return True

    def push_pull(self, grad, local_flat):
        before = local_flat.clone()
        self.adam.step(grad)
        local_flat.copy_(self.adam.params)
        self.pushes.append((local_flat.data_ptr(), before, grad.clone(), local_flat.clone()))

    def pull(self, local_flat):
        local_flat.copy_(self.adam.params)

    def add_steps(self, n):
        self.steps += n
        return self.steps

    def episodes_done(self, records):
        self.records.extend(records)

    def should_stop(self):
        return False

    def nonfinite(self):
        raise AssertionError("no non-finite values expected")
