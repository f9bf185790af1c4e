"""Ray runner: the same Algorithm 1 worker loop on Ray actors, across one machine or many.

The actors (a **parameter server** holding the global parameters, the shared Adam and the
counters; one **worker** actor per rank hosting its actor-learners with
:func:`qa3c_qiskit.a3c.run_learners`) and their round trips are in
:mod:`qa3c_qiskit.runners.ray_actors`; this module is the driver's transport.

The driver (:class:`RayRunner`) supervises the workers with the policy shared with the local
runner (:class:`~.base.Runner`): a worker whose actor dies (process killed, node lost) is
replaced by a new actor, at most ``max_restarts`` times per worker rank; the new actor pulls
the global parameters before its first step, and the episodes its learners had claimed are
given back, so the run ends with exactly the requested number of episodes.

**The parameter server is restarted too.** The driver keeps the last state it synced from the
parameter server (:meth:`RayRunner.sync`, called by the trainer at every checkpoint) and counts
the episodes it has delivered. When a call to the parameter server fails because its actor is
gone (process killed, node lost), the driver starts a new parameter server from that snapshot:
parameters and Adam state **roll back to the last sync** (the updates made since are lost; the
event says so), the env-step counter continues from the larger of the snapshot's and the last
delivered episode's, and the episode counter restarts at the number of episodes delivered, so
every claim the driver has not seen reported is given back and the run still ends with exactly
the budget. Every worker's loop holds the old server's handle, so every worker runs its loop
again against the new server (on the same actor, once the old loop has failed; fresh seeds; not
counted against the rank's worker restarts). At most
``max_restarts`` parameter-server restarts per session; one more loss is a :class:`Failure`
(``worker`` -1). Each restart is an :class:`Event` for the events log.
"""

from __future__ import annotations

import logging
import os
import time

from ..a3c import NonFiniteError
from ..checkpoint import RunState
from .base import Episode, Event, Failure, Runner, RunPlan, Slot
from .ray_actors import (  # imports Ray: without it, a one-line MissingExtraError
    NodeAffinitySchedulingStrategy,
    ParameterServer,
    RayActorError,
    RayTaskError,
    RayWorker,
    ray,
)

#: ``Failure.worker`` of a parameter server lost for good (it is no worker rank)
PARAMETER_SERVER = -1


class _Actor:
    """Transport state of one rank's current actor and run."""

    def __init__(self, actor, run, where, token, info=None, entries=None):
        self.actor, self.run, self.where, self.token = actor, run, where, token
        self.info: dict | None = info  # {"pid", "node"} once where() has answered
        self.entries: list[dict] = entries or []  # seed-log entries waiting for the pid


class _ParameterServerLost(Exception):
    """A driver call to the parameter server failed: its actor is gone."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class RayRunner(Runner):
    """Supervises Ray worker actors around a parameter server (policy: :class:`~.base.Runner`).

    ``address``: a Ray cluster to join (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``);
    ``None`` joins the Ray instance already initialised in this process, or starts a local one
    (shut down again in :meth:`close`). Ray's own actor restarts are off: the driver must give
    back the dead actor's episodes and re-run the loop, which Ray would not do. A lost parameter
    server is restarted from the last synced state (see the module docstring).
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
        self.actors: dict[int, _Actor] = {}
        self._incarnation = 0
        self._stop_sent = False
        self._closed = False
        self._failed = False  # a Failure was reported: no parameter-server restart any more
        self._reuse = False  # _launch: reuse the rank's actor (after a parameter-server restart)
        self._gate: list | None = None  # start(gate=True): runs to submit once all are up
        self._abandoned: list = []  # runs on a lost server: their errors are expected
        self.final: dict | None = None  # the parameter server's last state, kept by close()
        # What a new parameter server starts from: the last synced state, and the episodes
        # delivered so far (by poll) with the env-step count of the last of them.
        self.synced = {
            "flat": state.flat.detach().clone(),
            "adam": state.adam,
            "env_steps": state.env_steps,
            "nonfinite": state.nonfinite,
        }
        self.delivered = state.episodes_done
        self._last_env_steps = state.env_steps
        self.ps_restarts = 0
        self.ps_lost = False  # lost for good (not restarted): sync/close use ``synced``
        self.ps = self._new_parameter_server(state.episodes_done, state.env_steps)

    def _new_parameter_server(self, claimed: int, env_steps: int):
        s = self.synced
        # On the driver's node: its replies are the workers' only round trip.
        here = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(here, soft=True)
        return ParameterServer.options(scheduling_strategy=strategy).remote(
            s["flat"].detach().clone(),
            self.plan.lr,
            self.plan.betas,
            self.plan.eps,
            s["adam"],
            self.plan.budget,
            claimed,
            env_steps,
            s["nonfinite"],
        )

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> None:
        """As :meth:`Runner._spawn`, but the actors started after a parameter-server restart
        get fresh seeds too (restart index = the rank's restarts + parameter-server restarts,
        which grows with every new actor of the rank) without using up the rank's restarts."""
        learners = self.plan.learner_seeds(slot.rank, slot.restarts + self.ps_restarts)
        self._launch(slot, learners)
        slot.entry = {
            "worker": slot.rank,
            "seed": learners[0][1],
            "learners": {lid: seed for lid, seed in learners},
            "pid": None,  # filled in when the actor's process is known (see _announce)
            "restart": slot.restarts,
            "resume": self.plan.resume_count,
            "time": time.time(),
        }
        if self.ps_restarts:
            slot.entry["ps_restart"] = self.ps_restarts
        self.state.seed_log.append(slot.entry)
        a = self.actors[slot.rank]
        if a.info is None:
            a.entries.append(slot.entry)
        else:  # a reused actor: its process is known
            slot.entry["pid"] = a.info["pid"]
            self._pending.append(Event(self._started_text(slot, self._where_text(a, True))))

    def start(self, gate: bool = False) -> None:
        """Start every worker. ``gate=True``: start their loops only once every worker actor is
        up (process started, imports done), so that a small budget is shared by all of them
        rather than used up by the first one up (tests, benchmarks; the trainer does not)."""
        self._gate = [] if gate else None
        try:
            super().start()
            if gate:
                ray.wait(
                    [a.where for a in self.actors.values()], num_returns=len(self.actors)
                )  # a failed actor is reported by poll, as without the gate
                for submit in self._gate:
                    submit()
        finally:
            self._gate = None

    def _launch(self, slot: Slot, learners: list[tuple[int, int]]) -> None:
        self._incarnation += 1
        token = (slot.rank, self._incarnation)
        plan = self.plan
        old = self.actors.get(slot.rank)
        if self._reuse and old is not None:
            # the new run starts when the old one has failed (one call at a time)
            a = _Actor(old.actor, None, old.where, token, old.info, old.entries)
        else:
            actor = RayWorker.remote()
            where = actor.where.remote()  # runs before run(): calls to an actor run in order
            a = _Actor(actor, None, where, token)
        self.actors[slot.rank] = a

        def submit():
            a.run = a.actor.run.remote(
                slot.rank, learners, plan.env_id, plan.spec, plan.settings, self.ps, token
            )

        if self._gate is None:
            submit()
        else:
            self._gate.append(submit)
        return None  # the pid follows in a "worker N started" event (see _started)

    def pid(self, rank: int) -> int:
        """The OS process id of worker ``rank``'s current actor (on its node); waits for it."""
        a = self.actors[rank]
        return a.info["pid"] if a.info is not None else ray.get(a.where)["pid"]

    def ps_pid(self) -> int:
        """The OS process id of the parameter server (on the driver's node)."""
        return ray.get(self.ps.where.remote())["pid"]

    # -- messages ----------------------------------------------------------------------------
    def poll(self, timeout: float = 0.2) -> list:
        records: list[dict] = []
        events, self._pending = self._pending, []
        if self._closed:
            return events
        try:
            self._poll(timeout, records, events)
        except _ParameterServerLost as lost:
            events += self._parameter_server_lost(lost.cause)
        self.delivered += len(records)
        if records:
            self._last_env_steps = max(self._last_env_steps, records[-1]["env_steps"])
        return [Episode(r) for r in records] + events

    def _ps_get(self, ref):
        """``ray.get`` of a parameter-server call; its actor being gone raises
        :class:`_ParameterServerLost`."""
        try:
            return ray.get(ref)
        except RayActorError as exc:
            raise _ParameterServerLost(exc) from exc

    def _poll(self, timeout: float, records: list, events: list) -> None:
        """Fill ``records`` and ``events``; a lost parameter server raises
        :class:`_ParameterServerLost` (``events`` keeps what was found before)."""
        if self.stopping and not self._stop_sent:
            self._send_stop()
        self._collect_abandoned()
        runs = {a.run: rank for rank, a in self.actors.items() if a.run is not None}
        if runs:
            ray.wait(list(runs), num_returns=1, timeout=0 if events else timeout)
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0)
            for ref in ready:
                self._finished(self.slots[runs[ref]], events)
        events += self._started()
        if not self.ps_lost:
            # after the finished workers: their last records are at the server by now
            records += self._ps_get(self.ps.drain.remote())

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
            a.info = ray.get(ref)
        except (RayActorError, RayTaskError):
            return []  # died before it started: reported by _finished
        for entry in a.entries:
            entry["pid"] = a.info["pid"]
        a.entries = []
        return [Event(self._started_text(slot, self._where_text(a, "ps_restart" in slot.entry)))]

    @staticmethod
    def _where_text(a: _Actor, ps_restart: bool) -> str:
        return f" node={a.info['node']}" + (
            " (new run after a parameter-server restart)" if ps_restart else ""
        )

    def _finished(self, slot: Slot, events: list) -> None:
        """Handle the end of ``slot``'s run; its messages go to ``events``."""
        a = self.actors[slot.rank]
        ref, a.run = a.run, None
        # where() ran before run(), so it has resolved (or failed) by now
        if a.where is not None:
            events += self._announce(slot, a)
        try:
            ray.get(ref)
            events += self._after_exit(slot, None, False, 0)
            return
        except (RayTaskError, RayActorError) as exc:
            failure = exc
        # RayTaskError: run_learners raised; RayActorError: the process (or its node) died.
        # If the parameter server is gone (which also fails every worker), this raises.
        given_back = self._ps_get(self.ps.retire.remote(a.token))
        fatal = isinstance(failure, NonFiniteError) or isinstance(
            getattr(failure, "cause", None), NonFiniteError
        )  # --on-nonfinite raise: abort, do not restart
        tb = str(failure).strip() or type(failure).__name__
        tb = f"worker {slot.rank} ({type(failure).__name__}):\n{tb}\n"
        ray.kill(a.actor)  # a task failure leaves the actor alive: start afresh
        out = self._after_exit(slot, tb, fatal, given_back)
        self._failed |= any(isinstance(m, Failure) for m in out)
        events += out

    def _collect_abandoned(self) -> None:
        """Fetch the (expected) errors of the runs abandoned with a lost parameter server, so
        that Ray does not print them as unhandled when their references are dropped."""
        if not self._abandoned:
            return
        done, self._abandoned = ray.wait(
            self._abandoned, num_returns=len(self._abandoned), timeout=0
        )
        for ref in done:
            try:
                ray.get(ref)
            except (RayTaskError, RayActorError):
                pass

    # -- the parameter server ------------------------------------------------------------------
    def _parameter_server_lost(self, cause: BaseException) -> list:
        """Replace a lost parameter server (and every worker actor, which holds its handle)
        from the last synced state, or, past ``max_restarts`` (or while stopping), end the run."""
        ray.kill(self.ps, no_restart=True)  # gone already, or unreachable: never two servers
        for a in self.actors.values():
            if a.run is not None:  # it fails at its next call to the lost server
                self._abandoned.append(a.run)
            a.run = None
        why = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause) else ''}"
        plan, s = self.plan, self.synced
        step = int(s["adam"]["step"]) if s["adam"] is not None else 0
        if self.stopping or self._failed or self.ps_restarts >= plan.max_restarts:
            self.ps_lost = True
            for a in self.actors.values():
                ray.kill(a.actor)
            for slot in self.slots.values():
                slot.finished = True
            text = (
                f"parameter server died ({why}); the global state is the last synced one "
                f"(Adam step {step})"
            )
            if self.stopping or self._failed:
                return [Event(text + "; not restarted: the run is stopping")]
            return [
                Failure(
                    PARAMETER_SERVER,
                    f"{text}; restarts used: {self.ps_restarts}/{plan.max_restarts}\n",
                )
            ]
        self.ps_restarts += 1
        env_steps = self._lost_state()["env_steps"]
        self.ps = self._new_parameter_server(self.delivered, env_steps)
        self._stop_sent = False
        out = [
            Event(
                f"parameter server died ({why}); restart {self.ps_restarts}/{plan.max_restarts} "
                f"from the last synced state: parameters and Adam rolled back to Adam step "
                f"{step} (updates since then lost), episode count reset to the {self.delivered} "
                f"episodes delivered (unreported claims given back), env steps {env_steps}; "
                f"the learners of all {plan.workers} workers begin again with fresh seeds"
            )
        ]
        # The worker actors are reused (no process start-up): each new run starts once the old
        # one has failed (an actor runs one call at a time). A dead actor fails its new run and
        # is replaced by the usual worker-restart policy.
        self._reuse = True
        try:
            for slot in self.slots.values():
                slot.finished = False
                self._spawn(slot)
        finally:
            self._reuse = False
        return out

    def _lost_state(self) -> dict:
        """The global state when the parameter server is gone: the last synced one, with the
        episodes delivered since as claimed, and env steps at least those of the last one."""
        s = self.synced
        steps = max(int(s["env_steps"]), int(self._last_env_steps))
        return {**s, "claimed": self.delivered, "env_steps": steps}

    def sync(self) -> RunState:
        """Copy the global state into ``state``; the copy is also what a restarted parameter
        server starts from. If the parameter server is gone, the last synced state is kept
        (the next :meth:`poll` restarts the server)."""
        if self._closed and self.final is not None:
            s = self.final
        elif self.ps_lost:
            s = self._lost_state()
        else:
            try:
                s = self._ps_get(self.ps.state.remote())
                self.synced = s
            except _ParameterServerLost:
                s = self._lost_state()
        self.state.flat = s["flat"].clone()
        self.state.adam = s["adam"]
        self.state.env_steps = int(s["env_steps"])
        self.state.nonfinite = int(s["nonfinite"])
        return self.state

    def _send_stop(self) -> None:
        self._stop_sent = True
        self.ps.stop.remote()  # a lost server shows up at the next drain

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (wait up to ``timeout`` s), keep the final global state (the last
        synced one if the parameter server is gone), remove the actors (and the local Ray
        instance this runner started). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        try:
            if not self.ps_lost:
                self._send_stop()
                runs = [a.run for a in self.actors.values() if a.run is not None]
                if runs:
                    ray.wait(runs, num_returns=len(runs), timeout=timeout)
                try:
                    self.final = self._ps_get(self.ps.state.remote())
                except _ParameterServerLost:
                    self.final = None
            if self.final is None:
                self.final = self._lost_state()
        finally:
            for a in self.actors.values():
                ray.kill(a.actor)
                if a.run is not None:
                    self._abandoned.append(a.run)
                a.run = a.where = None
            for slot in self.slots.values():
                slot.finished = True
            ray.kill(self.ps)
            if self._abandoned:  # killed just now, or earlier with a lost server: fail fast
                ray.wait(self._abandoned, num_returns=len(self._abandoned), timeout=2)
                self._collect_abandoned()
            self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False
