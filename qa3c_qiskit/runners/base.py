"""What every runner shares: the run plan, learner placement, typed messages and supervision.

A runner hosts the actor-learners of one run (:func:`qa3c_qiskit.a3c.run_learners`) in
``plan.workers`` processes (local processes or Ray actors); process ``rank`` hosts learners
``rank, rank + P, rank + 2P, ...`` of the ``plan.learners`` in all. The transport (shared
memory and pipes, or a Ray parameter server) is the subclass's; this module holds everything
else:

* :class:`RunPlan`: what to run (frozen; one object instead of a long argument list);
* :class:`~qa3c_qiskit.checkpoint.RunState`: the run's mutable state (counters, parameters, Adam
  state, seed log, restarts) - the checkpoint - which the runner updates in :meth:`sync` and
  when it starts or restarts a process;
* typed messages from :meth:`Runner.poll`: :class:`Episode`, :class:`Restart`,
  :class:`Failure`, :class:`Event`;
* the restart policy (:meth:`Runner._after_exit`): a process that died or raised is replaced
  (fresh process, fresh seeds for its learners, parameters pulled from the global model) up to
  ``max_restarts`` times per rank; the episodes its learners had claimed but not reported go
  back to the budget first, so a run always ends with exactly ``budget`` episodes.

A runner's public interface (used by :mod:`qa3c_qiskit.train`): ``start()``,
``poll(timeout) -> list[message]``, ``alive()``, ``sync()`` (copy the global parameters, Adam
state and counters into ``state``: a consistent snapshot), ``stop()`` (safe in a signal
handler: only sets a flag) and ``close(timeout)`` (no process left behind).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..a3c import A3CSettings
from ..checkpoint import RunState, learner_seed
from ..models import ModelSpec


@dataclass(frozen=True)
class RunPlan:
    """What a runner runs: the model, env, learning settings, parallelism and budget."""

    spec: ModelSpec
    env_id: str
    settings: A3CSettings
    workers: int  # processes (units of CPU)
    learners: int  # actor-learners in all (units of the algorithm), >= workers
    seed: int
    budget: int  # T_max: episodes in all
    lr: float = 1e-4
    betas: tuple[float, float] = (0.92, 0.999)
    eps: float = 1e-8
    max_restarts: int = 0
    resume_count: int = 0

    def learners_of(self, rank: int) -> list[int]:
        """Global ids of the learners hosted by process ``rank``."""
        return list(range(rank, self.learners, self.workers))

    def learner_seeds(self, rank: int, restart: int = 0) -> list[tuple[int, int]]:
        """[(learner id, seed), ...] for process ``rank`` after ``restart`` restarts."""
        return [
            (lid, learner_seed(self.seed, lid, self.resume_count, restart))
            for lid in self.learners_of(rank)
        ]


# ----------------------------------------------------------------------------------------------
# Messages a runner's poll() returns
# ----------------------------------------------------------------------------------------------
@dataclass
class Episode:
    """A finished episode: worker, learner, return, length, time (unix s), env_steps."""

    record: dict


@dataclass
class Restart:
    """Process ``worker`` crashed and was replaced; its unreported episodes were given back."""

    worker: int
    restart: int
    max_restarts: int
    seeds: list[int]
    pid: int | str
    episodes_given_back: int
    traceback: str

    def text(self) -> str:
        return (
            f"worker {self.worker} crashed; restart {self.restart}/{self.max_restarts} "
            f"(pid {self.pid}, seeds {_seeds_text(self.seeds)}, {self.episodes_given_back} "
            "claimed episode(s) given back)"
        )


@dataclass
class Failure:
    """Process ``worker`` failed for good (restarts used up, or NonFiniteError with raise)."""

    worker: int  # -1: the Ray parameter server
    traceback: str
    fatal: bool = False

    @property
    def who(self) -> str:
        return "the parameter server" if self.worker < 0 else f"worker {self.worker}"


@dataclass
class Event:
    """A line for the run's events log (e.g. ``worker 0 started pid=123 seeds=0``)."""

    text: str


def _seeds_text(seeds: list[int]) -> str:
    return ",".join(map(str, seeds)) if len(seeds) <= 4 else f"{seeds[0]},..,{seeds[-1]}"


class Slot:
    """One worker rank: its restarts, whether it is done, and its current seed-log entry."""

    def __init__(self, rank: int):
        self.rank = rank
        self.restarts = 0
        self.finished = False
        self.entry: dict | None = None


class Runner(ABC):
    """Supervision shared by the local and the Ray runner; subclasses provide the transport."""

    def __init__(self, plan: RunPlan, state: RunState):
        if plan.learners < plan.workers:
            raise ValueError(
                f"--learners {plan.learners} must be >= --workers {plan.workers} "
                "(every process hosts at least one learner)"
            )
        if plan.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {plan.max_restarts}")
        self.plan, self.state = plan, state
        self.slots = {rank: Slot(rank) for rank in range(plan.workers)}
        self._pending: list = []
        self._stop_requested = False

    # -- transport (subclasses) ----------------------------------------------------------------
    @abstractmethod
    def _launch(self, slot: Slot, learners: list[tuple[int, int]]) -> int | None:
        """Start the process of ``slot`` hosting ``learners``; return its pid if known."""

    @abstractmethod
    def poll(self, timeout: float = 0.2) -> list:
        """Messages since the last poll (Episodes first, in arrival order)."""

    @abstractmethod
    def sync(self) -> RunState:
        """Copy the global parameters, Adam state and counters into ``state``; return it."""

    @abstractmethod
    def close(self, timeout: float = 10.0) -> None:
        """Stop and remove every process (joined, or terminated after ``timeout`` s)."""

    # -- shared ------------------------------------------------------------------------------------
    def start(self) -> None:
        for slot in self.slots.values():
            self._spawn(slot)

    def stop(self) -> None:
        """Ask every process to stop after its current env step (only sets a flag)."""
        self._stop_requested = True

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def alive(self) -> bool:
        """True while any process may still send messages or be restarted."""
        return any(not s.finished for s in self.slots.values())

    def _spawn(self, slot: Slot) -> None:
        learners = self.plan.learner_seeds(slot.rank, slot.restarts)
        pid = self._launch(slot, learners)
        slot.entry = {
            "worker": slot.rank,
            "seed": learners[0][1],
            "learners": {lid: seed for lid, seed in learners},
            "pid": pid,
            "restart": slot.restarts,
            "resume": self.plan.resume_count,
            "time": time.time(),
        }
        self.state.seed_log.append(slot.entry)
        if pid is not None:
            self._pending.append(Event(self._started_text(slot)))

    def _started_text(self, slot: Slot, where: str = "") -> str:
        seeds = list(slot.entry["learners"].values())
        return (
            f"worker {slot.rank} started pid={slot.entry['pid']} seed={seeds[0]} "
            f"learners={len(seeds)}" + where
        )

    def _after_exit(self, slot: Slot, failure: str | None, fatal: bool, given_back: int) -> list:
        """The restart policy, once ``slot``'s process has ended and its unreported claims were
        given back (``given_back`` episodes). ``failure`` is None for a clean exit."""
        if failure is None:
            slot.finished = True
            return []
        if self.stopping or fatal or slot.restarts >= self.plan.max_restarts:
            slot.finished = True
            if self.stopping and not fatal:
                return []
            note = "" if fatal else f" (restarts used: {slot.restarts}/{self.plan.max_restarts})"
            return [Failure(slot.rank, failure + note, fatal)]
        slot.restarts += 1
        self.state.restarts += 1
        self._spawn(slot)
        return [
            Restart(
                worker=slot.rank,
                restart=slot.restarts,
                max_restarts=self.plan.max_restarts,
                seeds=list(slot.entry["learners"].values()),
                pid=slot.entry["pid"] if slot.entry["pid"] is not None else "pending",
                episodes_given_back=max(given_back, 0),
                traceback=failure,
            )
        ]
