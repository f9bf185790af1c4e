"""Ray runner: the same Algorithm 1 worker loop on Ray actors, across one machine or many.

* A **parameter server** actor holds the global actor/critic (one flat float64 vector), the
  shared Adam (:class:`~qa3c_qiskit.optim.SharedAdam`; one process owns it, so no shared memory),
  the global episode counter T, the env-step counter, the count of skipped non-finite updates and
  the finished-episode records the driver polls. A Ray actor runs one method at a time, so every
  push-and-pull sees a consistent Adam state, as under the local runner's lock.
* Each **worker** is a Ray actor (``num_cpus=1``) that runs :func:`qa3c_qiskit.a3c.run_worker`,
  the very loop the local runner hosts, with a :class:`RayHub` that talks to the parameter
  server. It builds its own environment and its own backend instance inside its process.
* The driver (:class:`RayRunner`) supervises the workers. A worker whose actor dies (process
  killed, node lost) is replaced by a new actor, at most ``max_restarts`` times per worker rank;
  the new actor pulls the global parameters before its first step, and the episode its
  predecessor had claimed is given back, so the run ends with exactly the requested number of
  episodes. Each restart is reported as a ``("restart", info)`` message (the trainer logs it,
  as for the local runner) and each new actor as an ``("event", {"text": ...})`` with its pid
  and node.

Round trips: one per update (``push_pull`` returns the new parameters, the stop flag and the
global step count) and one per episode (the claim); env-step counts, episode records and
non-finite counts are sent without waiting for a reply. Ray runs the calls of one caller on one actor in submission order, so the
counters stay exact; the parameter server stamps each episode record with the global env-step
count at the time it arrives.
"""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import torch

from ..a3c import A3CSettings, NonFiniteError, run_worker
from ..checkpoint import worker_seed
from ..models import ModelSpec
from ..optim import SharedAdam


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

    def episode_done(self, token, record: dict) -> None:
        if token in self.retired:  # its claim was given back: the episode is run again
            return
        self.claims[token] = self.claims.get(token, 0) - 1
        self.records.append({**record, "env_steps": self.env_steps})

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

    def episode_done(self, record: dict) -> None:
        self.ps.episode_done.remote(self.token, record)

    def should_stop(self) -> bool:
        # The stop flag arrives with every reply (at least once per S steps): no extra round trip.
        return self.stopped

    def nonfinite(self) -> None:
        self.ps.nonfinite.remote()


@ray.remote(num_cpus=1, max_restarts=0)
class RayWorker:
    """Hosts one actor-learner; its environment and backend are built inside this process."""

    def __init__(self):
        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C

    def where(self) -> dict:
        """{"pid": OS process id, "node": IP address of the node it runs on}."""
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def run(self, rank, seed, env_id, spec, settings, ps, token) -> None:
        """Algorithm 1 until the budget is used up or the run is stopped."""
        try:
            run_worker(rank, seed, env_id, spec, settings, RayHub(ps, token))
        finally:
            # Every message sent without a reply has reached the parameter server before the
            # driver sees this worker finish, so no episode record can arrive after that.
            ray.get(ps.barrier.remote())


class _Slot:
    """One worker rank: its current actor, run and bookkeeping."""

    def __init__(self, rank: int):
        self.rank = rank
        self.actor = None
        self.run = None  # ObjectRef of the current actor's run() (None once finished)
        self.where = None  # ObjectRef of the current actor's where()
        self.log: dict | None = None  # this actor's seed_log entry
        self.incarnation = 0
        self.restarts = 0


class RayRunner:
    """Starts, supervises (restarts) and stops Ray worker actors around a parameter server.

    Same arguments as :class:`~qa3c_qiskit.runners.local.LocalRunner`, plus ``address``: a Ray
    cluster to join (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); ``None`` joins the
    Ray instance already initialised in this process, or starts a local one (shut down again
    in :meth:`close`). A worker whose actor dies is replaced by a new actor with a fresh seed,
    at most ``max_restarts`` times per rank (Ray's own actor restarts are off: the driver must
    give back the dead actor's episode and re-run the loop, which Ray would not do).
    """

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
        nonfinite: int = 0,
        max_restarts: int = 3,
        resume_count: int = 0,
        address: str | None = None,
    ):
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        self.spec, self.env_id, self.settings = spec, env_id, settings
        self.n_workers, self.seed = workers, seed
        self.max_restarts, self.resume_count = max_restarts, resume_count
        self.owns_ray = False
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
            flat.detach().clone(), lr, betas, eps, adam_state, budget, done, env_steps, nonfinite
        )
        self.slots = {rank: _Slot(rank) for rank in range(workers)}
        self.seed_log: list[dict] = []  # every worker actor started: rank, seed, pid, restart
        self._pending: list[tuple[str, dict]] = []
        self._stop_requested = self._stop_sent = False
        self.final: dict | None = None  # the parameter server's last state, kept by close()
        self._closed = False

    def seeds(self) -> dict[int, int]:
        return {r: worker_seed(self.seed, r, self.resume_count) for r in range(self.n_workers)}

    def _spawn(self, slot: _Slot) -> None:
        seed = worker_seed(self.seed, slot.rank, self.resume_count, slot.restarts)
        slot.actor = RayWorker.remote()
        slot.where = slot.actor.where.remote()  # runs first: calls to an actor run in order
        token = (slot.rank, slot.incarnation)
        args = (slot.rank, seed, self.env_id, self.spec, self.settings, self.ps, token)
        slot.run = slot.actor.run.remote(*args)
        slot.log = {"worker": slot.rank, "seed": seed, "pid": None, "restart": slot.restarts}
        slot.log["resume"] = self.resume_count
        self.seed_log.append(slot.log)

    def start(self) -> None:
        for slot in self.slots.values():
            self._spawn(slot)

    def worker_pid(self, rank: int) -> int:
        """The OS process id of worker ``rank``'s current actor (on its node); waits for it."""
        slot = self.slots[rank]
        return slot.log["pid"] if slot.where is None else ray.get(slot.where)["pid"]

    def poll(self, timeout: float = 0.2) -> list[tuple[str, dict]]:
        """Messages: ("episode", record), ("restart", info), ("error", info), ("exit", info),
        ("event", {text}); episodes first, in the order they reached the parameter server."""
        if self._stop_requested and not self._stop_sent:
            self._send_stop()
        events, self._pending = self._pending, []
        runs = {s.run: s for s in self.slots.values() if s.run is not None}
        if runs:
            ray.wait(list(runs), num_returns=1, timeout=0 if events else timeout)
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0)
            for ref in ready:
                events += self._finished(runs[ref])
        events += self._started()
        out = [("episode", r) for r in ray.get(self.ps.drain.remote())]
        return out + events

    def _started(self) -> list[tuple[str, dict]]:
        """An event for each worker actor whose process is now known (pid, node)."""
        out = []
        for slot in self.slots.values():
            if slot.where is not None and ray.wait([slot.where], timeout=0)[0]:
                out += self._announce(slot)
        return out

    def _announce(self, slot: _Slot) -> list[tuple[str, dict]]:
        ref, slot.where = slot.where, None
        try:
            info = ray.get(ref)
        except (RayActorError, RayTaskError):
            return []  # died before it started: reported by _finished
        slot.log["pid"] = info["pid"]
        text = f"worker {slot.rank} started pid={info['pid']} seed={slot.log['seed']} "
        return [("event", {"text": text + f"node={info['node']}"})]

    def _finished(self, slot: _Slot) -> list[tuple[str, dict]]:
        ref, slot.run = slot.run, None
        exit_msg = ("exit", {"worker": slot.rank})
        # where() ran before run(), so it has resolved (or failed) by now
        started = self._announce(slot) if slot.where is not None else []
        try:
            ray.get(ref)
            return started + [exit_msg]
        except (RayTaskError, RayActorError) as exc:
            failure = exc
        # RayTaskError: run_worker raised; RayActorError: the process (or its node) died.
        given_back = ray.get(self.ps.retire.remote((slot.rank, slot.incarnation)))
        fatal = isinstance(failure, NonFiniteError) or isinstance(
            getattr(failure, "cause", None), NonFiniteError
        )  # --on-nonfinite raise: abort, do not restart
        tb = str(failure).strip() or type(failure).__name__
        tb = f"worker {slot.rank} ({type(failure).__name__}):\n{tb}\n"
        if self._stop_requested or fatal or slot.restarts >= self.max_restarts:
            ray.kill(slot.actor)
            if self._stop_requested and not fatal:
                return started + [exit_msg]
            note = "" if fatal else f" (restarts used: {slot.restarts}/{self.max_restarts})"
            return started + [
                ("error", {"worker": slot.rank, "traceback": tb + note, "fatal": fatal}),
                exit_msg,
            ]
        ray.kill(slot.actor)  # a task failure leaves the actor alive: start afresh
        slot.restarts += 1
        slot.incarnation += 1
        self._spawn(slot)
        info = {
            "worker": slot.rank,
            "restart": slot.restarts,
            "max_restarts": self.max_restarts,
            "seed": slot.log["seed"],
            "pid": "pending",  # the new actor's pid follows in a "worker N started" event
            "episodes_given_back": given_back,
            "traceback": tb,
        }
        return started + [("restart", info)]

    def alive(self) -> bool:
        return any(s.run is not None for s in self.slots.values())

    def _state(self) -> dict:
        return self.final if self.final is not None else ray.get(self.ps.state.remote())

    def global_state(self) -> tuple[torch.Tensor, dict]:
        """A consistent copy of the global parameters and the shared Adam state."""
        state = self._state()
        return state["flat"].clone(), state["adam"]

    @property
    def nonfinite_count(self) -> int:
        return int(self._state()["nonfinite"])

    @property
    def env_steps(self) -> int:
        return int(self._state()["env_steps"])

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots.values())

    def stop(self) -> None:
        """Ask every worker to stop within S env steps (safe in a signal handler: only sets a
        flag; the next :meth:`poll` or :meth:`close` tells the parameter server)."""
        self._stop_requested = True

    def _send_stop(self) -> None:
        self._stop_sent = True
        self.ps.stop.remote()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (wait up to ``timeout`` s), keep the final global state, remove the
        actors (and the local Ray instance this runner started). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        self._send_stop()
        runs = [s.run for s in self.slots.values() if s.run is not None]
        if runs:
            ray.wait(runs, num_returns=len(runs), timeout=timeout)
        try:
            self.final = ray.get(self.ps.state.remote())  # raises if the parameter server is lost
        finally:
            for slot in self.slots.values():
                if slot.actor is not None:
                    ray.kill(slot.actor)
                slot.run = slot.where = None
            ray.kill(self.ps)
            self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False
