"""Ray runner: the same Algorithm 1 worker loop on Ray actors, across one machine or many.

* A **parameter server** actor holds the global actor/critic (one flat float64 vector), the
  shared Adam (:class:`~qa3c_qiskit.optim.SharedAdam`; one process owns it, so no shared memory),
  the global episode counter T, the env-step counter, the count of skipped non-finite updates and
  the finished-episode records the driver polls. A Ray actor runs one method at a time, so every
  push-and-pull sees a consistent Adam state, as under the local runner's lock.
* Each **worker** is a Ray actor (``num_cpus=1``) that hosts its actor-learners with
  :func:`qa3c_qiskit.a3c.run_learners`, the very loop the local runner hosts, with a
  :class:`RayHub` that talks to the parameter server. It builds its own environments and its
  own backend instance inside its process.
* The driver (:class:`RayRunner`) supervises the workers with the policy shared with the local
  runner (:class:`~.base.Runner`): a worker whose actor dies (process killed, node lost) is
  replaced by a new actor, at most ``max_restarts`` times per worker rank; the new actor pulls
  the global parameters before its first step, and the episodes its learners had claimed are
  given back, so the run ends with exactly the requested number of episodes.

Round trips: one per learner update (``push_pull`` returns the new parameters, the stop flag and
the global step count) and one per episode (the claim); env-step counts, episode records (one
message per env step) and non-finite counts are sent without waiting for a reply. Ray runs the calls of one caller on one actor in submission order, so the
counters stay exact; the parameter server stamps each episode record with the global env-step
count at the time it arrives.
"""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import torch

from ..a3c import NonFiniteError, run_learners
from ..checkpoint import RunState
from ..optim import SharedAdam
from .base import Episode, Event, Runner, RunPlan, Slot


class MissingExtraError(ImportError, ValueError):
    """An optional extra is not installed (a ValueError too, so the CLI prints one line)."""


RAY_MISSING = (
    "--runner ray needs Ray, which is not installed: "
    "pip install 'qa3c-qiskit[ray]' (or pip install -e '.[ray]' in a checkout)"
)

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:
    raise MissingExtraError(RAY_MISSING) from None


@ray.remote(num_cpus=0, max_concurrency=1)
class ParameterServer:
    """Global parameters + shared Adam + global counters; the single writer of all of them.

    Workers are identified by a token ``(rank, incarnation)``; a replaced incarnation is
    *retired*: its outstanding episode claim is given back and its late messages are ignored.
    """

    def __init__(self, flat, lr, betas, eps, adam_state, budget, done, env_steps, nonfinite=0):
        torch.set_num_threads(1)
        self.adam = SharedAdam(flat.clone(), lr=lr, betas=betas, eps=eps)
        if adam_state is not None:
            self.adam.load_state_dict(adam_state)
        self.budget, self.claimed, self.env_steps = budget, done, env_steps
        self.nonfinite_count = nonfinite
        self.stopped = False
        self.claims: dict[tuple, int] = {}  # token -> episodes claimed but not yet finished
        self.retired: set[tuple] = set()
        self.records: list[dict] = []

    def claim_episode(self, token) -> tuple[bool, bool]:
        """(claimed one episode of the budget?, stop flag)."""
        if self.stopped or token in self.retired or self.claimed >= self.budget:
            return False, self.stopped
        self.claimed += 1
        self.claims[token] = self.claims.get(token, 0) + 1
        return True, self.stopped

    def push_pull(self, grad: np.ndarray) -> tuple[np.ndarray, bool, int]:
        """Apply one pushed gradient with the shared Adam; return (parameters, stop, env steps).

        Vectors travel as numpy arrays: Ray serialises them faster than small torch tensors.
        """
        self.adam.step(torch.tensor(grad))
        return self.adam.params.numpy(), self.stopped, self.env_steps

    def pull(self) -> tuple[np.ndarray, bool, int]:
        return self.adam.params.numpy(), self.stopped, self.env_steps

    def add_steps(self, n: int) -> None:
        self.env_steps += n

    def episodes_done(self, token, records: list[dict]) -> None:
        if token in self.retired:  # its claims were given back: the episodes are run again
            return
        self.claims[token] = self.claims.get(token, 0) - len(records)
        self.records.extend({**r, "env_steps": self.env_steps} for r in records)

    def nonfinite(self) -> None:
        self.nonfinite_count += 1

    def stop(self) -> None:
        self.stopped = True

    def retire(self, token) -> int:
        """Retire a dead worker incarnation; give back its claimed episodes; return how many."""
        self.retired.add(token)
        back = self.claims.pop(token, 0)
        self.claimed -= back
        return back

    def barrier(self) -> None:
        """A no-op: when it returns, every earlier call of the same caller has run."""

    def drain(self) -> list[dict]:
        """The episode records that arrived since the last drain, in arrival order."""
        out, self.records = self.records, []
        return out

    def state(self) -> dict:
        """Parameters, Adam state and counters (a consistent snapshot: calls run one at a time)."""
        return {
            "flat": self.adam.params.clone(),
            "adam": self.adam.state_dict(),
            "claimed": self.claimed,
            "env_steps": self.env_steps,
            "nonfinite": self.nonfinite_count,
        }


class RayHub:
    """A worker's view of the parameter server (the hub protocol of :mod:`qa3c_qiskit.a3c`)."""

    def __init__(self, ps, token):
        self.ps, self.token = ps, token
        self.stopped = False
        self.steps = 0  # global env steps as of the last reply, plus this worker's since then

    def claim_episode(self) -> bool:
        ok, self.stopped = ray.get(self.ps.claim_episode.remote(self.token))
        return ok

    def push_pull(self, grad: torch.Tensor, local_flat: torch.Tensor) -> None:
        ref = self.ps.push_pull.remote(grad.numpy())  # serialised here: grad may be reused
        params, self.stopped, self.steps = ray.get(ref)
        local_flat.numpy()[:] = params

    def pull(self, local_flat: torch.Tensor) -> None:
        params, self.stopped, self.steps = ray.get(self.ps.pull.remote())
        local_flat.numpy()[:] = params

    def add_steps(self, n: int) -> int:
        self.ps.add_steps.remote(n)  # no reply needed; runs before this worker's next call
        self.steps += n
        return self.steps

    def episodes_done(self, records: list[dict]) -> None:
        self.ps.episodes_done.remote(self.token, records)

    def should_stop(self) -> bool:
        # The stop flag arrives with every reply (at least once per S steps): no extra round trip.
        return self.stopped

    def nonfinite(self) -> None:
        self.ps.nonfinite.remote()


@ray.remote(num_cpus=1, max_restarts=0)
class RayWorker:
    """Hosts the actor-learners of one rank; their environments and backend are built inside
    this process."""

    def __init__(self):
        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C

    def where(self) -> dict:
        """{"pid": OS process id, "node": IP address of the node it runs on}."""
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def run(self, rank, learners, env_id, spec, settings, ps, token) -> None:
        """Algorithm 1 until the budget is used up or the run is stopped."""
        try:
            run_learners(rank, learners, env_id, spec, settings, RayHub(ps, token))
        finally:
            # Every message sent without a reply has reached the parameter server before the
            # driver sees this worker finish, so no episode record can arrive after that.
            ray.get(ps.barrier.remote())


class _Actor:
    """Transport state of one rank's current actor."""

    def __init__(self, actor, run, where, token):
        self.actor, self.run, self.where, self.token = actor, run, where, token


class RayRunner(Runner):
    """Supervises Ray worker actors around a parameter server (policy: :class:`~.base.Runner`).

    ``address``: a Ray cluster to join (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``);
    ``None`` joins the Ray instance already initialised in this process, or starts a local one
    (shut down again in :meth:`close`). Ray's own actor restarts are off: the driver must give
    back the dead actor's episodes and re-run the loop, which Ray would not do.
    """

    def __init__(self, plan: RunPlan, state: RunState, address: str | None = None):
        super().__init__(plan, state)
        self.owns_ray = False
        workers = plan.workers
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if address is None:
                # A local cluster with a slot per worker, oversubscribed like the local runner.
                ray.init(num_cpus=max(os.cpu_count() or 1, workers), **kw)
            else:
                ray.init(address=address, **kw)
            self.owns_ray = True
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:
            self._shutdown_ray()
            raise ValueError(
                f"--workers {workers} needs {workers} CPUs on the Ray cluster, which has {cpus:g}"
            )
        # The parameter server sits on the driver's node: its replies are the only round trip.
        here = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(here, soft=True)
        self.ps = ParameterServer.options(scheduling_strategy=strategy).remote(
            state.flat.detach().clone(),
            plan.lr,
            plan.betas,
            plan.eps,
            state.adam,
            plan.budget,
            state.episodes_done,
            state.env_steps,
            state.nonfinite,
        )
        self.actors: dict[int, _Actor] = {}
        self._incarnation = 0
        self._stop_sent = False
        self._closed = False

    def _launch(self, slot: Slot, learners: list[tuple[int, int]]) -> None:
        self._incarnation += 1
        token = (slot.rank, self._incarnation)
        actor = RayWorker.remote()
        where = actor.where.remote()  # runs first: calls to an actor run in order
        plan = self.plan
        run = actor.run.remote(
            slot.rank, learners, plan.env_id, plan.spec, plan.settings, self.ps, token
        )
        self.actors[slot.rank] = _Actor(actor, run, where, token)
        return None  # the pid follows in a "worker N started" event (see _started)

    def pid(self, rank: int) -> int:
        """The OS process id of worker ``rank``'s current actor (on its node); waits for it."""
        a = self.actors[rank]
        return self.slots[rank].entry["pid"] if a.where is None else ray.get(a.where)["pid"]

    def poll(self, timeout: float = 0.2) -> list:
        if self.stopping and not self._stop_sent:
            self._send_stop()
        events, self._pending = self._pending, []
        runs = {a.run: rank for rank, a in self.actors.items() if a.run is not None}
        if runs:
            ray.wait(list(runs), num_returns=1, timeout=0 if events else timeout)
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0)
            for ref in ready:
                events += self._finished(self.slots[runs[ref]])
        events += self._started()
        out = [Episode(r) for r in ray.get(self.ps.drain.remote())]
        return out + events

    def _started(self) -> list:
        """An event for each worker actor whose process is now known (pid, node)."""
        out = []
        for rank, a in self.actors.items():
            if a.where is not None and ray.wait([a.where], timeout=0)[0]:
                out += self._announce(self.slots[rank], a)
        return out

    def _announce(self, slot: Slot, a: _Actor) -> list:
        ref, a.where = a.where, None
        try:
            info = ray.get(ref)
        except (RayActorError, RayTaskError):
            return []  # died before it started: reported by _finished
        slot.entry["pid"] = info["pid"]
        return [Event(self._started_text(slot, f" node={info['node']}"))]

    def _finished(self, slot: Slot) -> list:
        a = self.actors[slot.rank]
        ref, a.run = a.run, None
        # where() ran before run(), so it has resolved (or failed) by now
        started = self._announce(slot, a) if a.where is not None else []
        try:
            ray.get(ref)
            return started + self._after_exit(slot, None, False, 0)
        except (RayTaskError, RayActorError) as exc:
            failure = exc
        # RayTaskError: run_learners raised; RayActorError: the process (or its node) died.
        given_back = ray.get(self.ps.retire.remote(a.token))
        fatal = isinstance(failure, NonFiniteError) or isinstance(
            getattr(failure, "cause", None), NonFiniteError
        )  # --on-nonfinite raise: abort, do not restart
        tb = str(failure).strip() or type(failure).__name__
        tb = f"worker {slot.rank} ({type(failure).__name__}):\n{tb}\n"
        ray.kill(a.actor)  # a task failure leaves the actor alive: start afresh
        return started + self._after_exit(slot, tb, fatal, given_back)

    def sync(self) -> RunState:
        s = (
            self.final
            if self._closed and self.final is not None
            else ray.get(self.ps.state.remote())
        )
        self.state.flat = s["flat"].clone()
        self.state.adam = s["adam"]
        self.state.env_steps = int(s["env_steps"])
        self.state.nonfinite = int(s["nonfinite"])
        return self.state

    def _send_stop(self) -> None:
        self._stop_sent = True
        self.ps.stop.remote()

    final: dict | None = None  # the parameter server's last state, kept by close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (wait up to ``timeout`` s), keep the final global state, remove the
        actors (and the local Ray instance this runner started). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        self._send_stop()
        runs = [a.run for a in self.actors.values() if a.run is not None]
        if runs:
            ray.wait(runs, num_returns=len(runs), timeout=timeout)
        try:
            self.final = ray.get(self.ps.state.remote())  # raises if the parameter server is lost
        finally:
            for a in self.actors.values():
                ray.kill(a.actor)
                a.run = a.where = None
            for slot in self.slots.values():
                slot.finished = True
            ray.kill(self.ps)
            self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False
