"""The Ray actors of the Ray runner (:mod:`qa3c_qiskit.runners.ray`) and the import of Ray.

* A **parameter server** actor (:class:`ParameterServer`) holds the global actor/critic (one
  flat float64 vector), the shared Adam (:class:`~qa3c_qiskit.optim.SharedAdam`; one process owns
  it, so no shared memory), the global episode counter T, the env-step counter, the count of
  skipped non-finite updates and the finished-episode records the driver polls. A Ray actor runs
  one method at a time, so every push-and-pull sees a consistent Adam state, as under the local
  runner's lock.
* Each **worker** is a Ray actor (:class:`RayWorker`, ``num_cpus=1``) that hosts its
  actor-learners with :func:`qa3c_qiskit.a3c.run_learners`, the very loop the local runner
  hosts, with a :class:`RayHub` that talks to the parameter server. It builds its own
  environments and its own backend instance inside its process.

Round trips: one per learner update (``push_pull`` returns the new parameters, the stop flag and
the global step count) and one per episode (the claim); env-step counts, episode records (one
message per env step) and non-finite counts are sent without waiting for a reply. Ray runs the
calls of one caller on one actor in submission order, so the counters stay exact; the parameter
server stamps each episode record with the global env-step count at the time it arrives.

Importing this module imports Ray (and the Ray names the runner uses, re-exported here); without
Ray it raises :class:`MissingExtraError`, one line naming the ``[ray]`` extra.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import torch

from ..a3c import Hub, run_learners
from ..optim import SharedAdam

__all__ = [
    "RAY_MISSING",
    "MissingExtraError",
    "NodeAffinitySchedulingStrategy",
    "ParameterServer",
    "RayActorError",
    "RayHub",
    "RayTaskError",
    "RayWorker",
    "ray",
]


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


@ray.remote(num_cpus=0, max_concurrency=1, max_restarts=0)
class ParameterServer:
    """Global parameters + shared Adam + global counters; the single writer of all of them.

    Workers are identified by a token ``(rank, incarnation)``; a replaced incarnation is
    *retired*: its outstanding episode claims are given back and its late messages are ignored.
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

    def where(self) -> dict:
        """{"pid": OS process id, "node": IP address of the node it runs on}."""
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

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

    def push_pull_many(self, grads: np.ndarray) -> tuple[np.ndarray, bool, int]:
        """One Adam step per row of ``grads``, in order; the parameters after each [J, n]."""
        out = torch.empty(grads.shape, dtype=self.adam.params.dtype)
        self.adam.step_many(torch.from_numpy(grads), out, range(len(grads)))
        return out.numpy(), self.stopped, self.env_steps

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


class RayHub(Hub):
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

    def push_pull_many(self, grads: torch.Tensor, thetas: torch.Tensor, slots) -> None:
        ref = self.ps.push_pull_many.remote(grads.numpy())  # one round trip for all of them
        params, self.stopped, self.steps = ray.get(ref)
        thetas.numpy()[list(slots)] = params

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
