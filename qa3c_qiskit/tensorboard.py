"""``--tensorboard``: TensorBoard event files of a training run in ``RUN/tensorboard/``.

One event directory per run directory, so ``tensorboard --logdir runs/`` shows every run of a
``runs/`` folder side by side. The x axis (``step``) of every scalar is the **global episode
index** (1, 2, ... in completion order: the ``episode`` column of ``metrics.csv``); a resumed run
continues it. Tags, written once per finished episode:

* ``charts/episodic_return``, ``charts/episodic_length``, ``charts/avg100`` (average of the last
  100 returns), ``charts/env_steps_per_s`` (global env steps per second over the last 100
  episodes, all learners);
* ``losses/policy``, ``losses/value``, ``losses/entropy``, ``losses/grad_norm``, ``losses/updates``:
  the episode's learner's means over the updates of that episode (see
  :class:`qa3c_qiskit.a3c.SegmentGradients`);
* ``quantum/calls``, ``quantum/pubs``, ``quantum/circuits`` (and ``quantum/shots`` when the
  profile samples): the reporting worker process's cumulative primitive counters (Qiskit
  backends only; per process, so with several workers each tag interleaves their counts);
* ``eval/greedy_return``, ``eval/sampled_return`` (and ``..._std``): the periodic evaluation
  (``--eval-every``), at the episode index the evaluated parameters were taken at.

Needs the optional ``tensorboard`` extra (``pip install 'qa3c-qiskit[tensorboard]'``); events are
written with ``torch.utils.tensorboard.SummaryWriter``.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import numpy as np

TB_DIR = "tensorboard"
TB_EXTRA = "pip install 'qa3c-qiskit[tensorboard]'"
WINDOW = 100

#: record key -> tag of the per-episode update statistics and quantum counters
RECORD_TAGS = {
    "loss_policy": "losses/policy",
    "loss_value": "losses/value",
    "entropy": "losses/entropy",
    "grad_norm": "losses/grad_norm",
    "updates": "losses/updates",
    "q_calls": "quantum/calls",
    "q_pubs": "quantum/pubs",
    "q_circuits": "quantum/circuits",
    "q_shots": "quantum/shots",
}


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``; ValueError naming the extra if missing."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs the package)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(f"--tensorboard needs the 'tensorboard' package: {TB_EXTRA}") from None
    return SummaryWriter


class TensorBoardLogger:
    """Writes the per-episode scalars of a run (see the module docstring)."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        writer_cls = summary_writer_class()
        # purge_step: on resume, TensorBoard hides events of episodes after the checkpoint
        # that the previous session logged (they are re-run)
        self.writer = writer_cls(
            log_dir=str(Path(run_dir) / TB_DIR), purge_step=purge_step, flush_secs=10
        )
        self.returns: deque[float] = deque(maxlen=WINDOW)
        self.rate: deque[tuple[float, int]] = deque(maxlen=WINDOW)
        self.max_steps = 0

    def episode(self, step: int, rec: dict) -> None:
        add = self.writer.add_scalar
        ret = float(rec["return"])
        self.returns.append(ret)
        self.max_steps = max(self.max_steps, int(rec.get("env_steps", 0)))
        self.rate.append((float(rec["time"]), self.max_steps))
        add("charts/episodic_return", ret, step)
        add("charts/episodic_length", rec["length"], step)
        add("charts/avg100", float(np.mean(self.returns)), step)
        (t0, s0), (t1, s1) = self.rate[0], self.rate[-1]
        if t1 > t0:
            add("charts/env_steps_per_s", (s1 - s0) / (t1 - t0), step)
        for key, tag in RECORD_TAGS.items():
            value = rec.get(key)
            if value is not None and math.isfinite(float(value)):
                add(tag, float(value), step)

    def evaluation(self, step: int, result: dict) -> None:
        add = self.writer.add_scalar
        add("eval/greedy_return", result["greedy_mean"], step)
        add("eval/greedy_return_std", result["greedy_std"], step)
        add("eval/sampled_return", result["sampled_mean"], step)
        add("eval/sampled_return_std", result["sampled_std"], step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
