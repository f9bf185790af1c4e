"""Local runner: N torch.multiprocessing worker processes around shared-memory parameters.

The global actor/critic is one flat float64 vector in shared memory, with the shared Adam's
moments and step beside it. A worker pushes its local gradient and pulls the new parameters
under one lock (a short critical section: a handful of vector ops), so every update sees a
consistent Adam state.
"""

from __future__ import annotations

import queue as queue_mod
import signal
import sys
import traceback

import torch
import torch.multiprocessing as mp

from ..a3c import A3CSettings, run_worker
from ..models import ModelSpec
from ..optim import SharedAdam


class LocalHub:
    """The workers' view of the global model (picklable; shared tensors and mp primitives)."""

    def __init__(self, ctx, adam: SharedAdam, budget: int, done: int, env_steps: int):
        self.adam = adam
        self.lock = ctx.Lock()
        self.claimed = ctx.Value("q", done)
        self.budget = budget
        self.env_steps = ctx.Value("q", env_steps)
        self.nonfinite_count = ctx.Value("q", 0)
        self.stop_event = ctx.Event()
        self.queue = ctx.Queue()
        self.rank = None

    def claim_episode(self) -> bool:
        with self.claimed.get_lock():
            if self.claimed.value >= self.budget:
                return False
            self.claimed.value += 1
            return True

    def push_pull(self, grad: torch.Tensor, local_flat: torch.Tensor) -> None:
        with self.lock:
            self.adam.step(grad)
            local_flat.copy_(self.adam.params)

    def pull(self, local_flat: torch.Tensor) -> None:
        with self.lock:
            local_flat.copy_(self.adam.params)

    def add_steps(self, n: int) -> int:
        with self.env_steps.get_lock():
            self.env_steps.value += n
            return self.env_steps.value

    def episode_done(self, record: dict) -> None:
        self.queue.put(("episode", record))

    def should_stop(self) -> bool:
        return self.stop_event.is_set()

    def nonfinite(self) -> None:
        with self.nonfinite_count.get_lock():
            self.nonfinite_count.value += 1


def _worker_main(rank, seed, env_id, spec, settings, hub):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C
    try:
        run_worker(rank, seed, env_id, spec, settings, hub)
    except BaseException:
        hub.queue.put(("error", {"worker": rank, "traceback": traceback.format_exc()}))
        sys.exit(1)
    finally:
        hub.queue.put(("exit", {"worker": rank}))


class LocalRunner:
    """Starts, supervises and stops the worker processes of one run."""

    def __init__(
        self,
        flat: torch.Tensor,
        spec: ModelSpec,
        env_id: str,
        settings: A3CSettings,
        workers: int,
        seed: int,
        budget: int,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        done: int = 0,
        env_steps: int = 0,
        adam_state: dict | None = None,
    ):
        self.ctx = mp.get_context("spawn")
        adam = SharedAdam(flat.clone(), lr=lr, betas=betas, eps=eps)
        if adam_state is not None:
            adam.load_state_dict(adam_state)
        adam.share_memory()
        self.hub = LocalHub(self.ctx, adam, budget, done, env_steps)
        self.spec, self.env_id, self.settings = spec, env_id, settings
        self.n_workers, self.seed = workers, seed
        self.procs: dict[int, mp.Process] = {}

    def seeds(self) -> dict[int, int]:
        return {rank: self.seed + rank for rank in range(self.n_workers)}

    def _spawn(self, rank: int) -> None:
        proc = self.ctx.Process(
            target=_worker_main,
            args=(rank, self.seed + rank, self.env_id, self.spec, self.settings, self.hub),
            name=f"qa3c-worker-{rank}",
            daemon=True,
        )
        proc.start()
        self.procs[rank] = proc

    def start(self) -> None:
        for rank in range(self.n_workers):
            self._spawn(rank)

    def poll(self, timeout: float = 0.2) -> list[tuple[str, dict]]:
        """Messages from workers: ("episode", record), ("error", info), ("exit", info)."""
        out = []
        try:
            out.append(self.hub.queue.get(timeout=timeout))
            while True:
                out.append(self.hub.queue.get_nowait())
        except queue_mod.Empty:
            pass
        return out

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs.values())

    def global_state(self) -> tuple[torch.Tensor, dict]:
        """A consistent copy of the global parameters and the shared Adam state."""
        with self.hub.lock:
            return self.hub.adam.params.clone(), self.hub.adam.state_dict()

    @property
    def nonfinite_count(self) -> int:
        return self.hub.nonfinite_count.value

    def stop(self) -> None:
        self.hub.stop_event.set()

    def close(self, timeout: float = 10.0) -> None:
        self.stop()
        for p in self.procs.values():
            p.join(timeout)
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
                p.join(2)
