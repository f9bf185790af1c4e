"""Test-only fault injection: a CartPole that crashes, hangs, slows down or emits NaN rewards,
an env that is always cut by its time limit, and shared-memory faults for the hub.

Importing this module registers ``qa3c_faults:FaultyCartPole-v0`` and
``qa3c_faults:Truncating-v0`` (gymnasium imports the module named before the colon, also in
spawned worker processes, as long as ``tests/`` is on the path).
The faults are read from the ``QA3C_FAULT`` environment variable, a comma-separated list of:

* ``raise@N``: raise RuntimeError("injected fault") at this process's N-th reset;
* ``once=PATH``: make ``raise`` happen only once across all processes (PATH: a marker file);
* ``nan@K``: every K-th step of this process returns a NaN reward;
* ``slow@MS``: sleep MS milliseconds per step;
* ``hang=PATH``: while the file PATH exists, every step sleeps 60 s (a worker that ignores
  the stop request);
* ``killstep@N`` (with :class:`FaultyAdam` as the run's shared Adam): the process applying the
  N-th shared-Adam step SIGKILLs itself halfway through it (moments written, parameters not);
  with ``once=PATH`` only the first such process.

Hub helpers for ``tests/test_hub.py`` (spawned-process targets must be importable):
:class:`RecordingAdam`, :class:`FaultyAdam`, :func:`push_many`, :func:`push_batches`,
:func:`hold_lock`.
"""

from __future__ import annotations

import math
import os
import signal
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from qa3c_qiskit.optim import SharedAdam

ENV_ID = "qa3c_faults:FaultyCartPole-v0"
TRUNCATING_ID = "qa3c_faults:Truncating-v0"
TIME_LIMIT = 7  # Truncating-v0 never terminates: every episode is cut after 7 steps


def _faults() -> dict[str, str]:
    out = {}
    for item in filter(None, os.environ.get("QA3C_FAULT", "").split(",")):
        key, _, value = item.replace("=", "@", 1).partition("@")
        out[key] = value
    return out


def _first(marker: str) -> bool:
    """True in exactly one process: the one that creates ``marker``."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class FaultyCartPole(CartPoleEnv):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.faults = _faults()
        self.n_resets = 0
        self.n_steps = 0

    def reset(self, *, seed=None, options=None):
        self.n_resets += 1
        f = self.faults
        if "raise" in f and self.n_resets == int(f["raise"]):
            if "once" not in f or _first(f["once"]):
                raise RuntimeError("injected fault")
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.n_steps += 1
        f = self.faults
        if "slow" in f:
            time.sleep(int(f["slow"]) / 1000)
        if "hang" in f and os.path.exists(f["hang"]):
            time.sleep(60)
        obs, reward, terminated, truncated, info = super().step(action)
        if "nan" in f and self.n_steps % int(f["nan"]) == 0:
            reward = math.nan
        return obs, reward, terminated, truncated, info


if "FaultyCartPole-v0" not in gym.registry:
    gym.register(
        "FaultyCartPole-v0",
        entry_point=FaultyCartPole,
        max_episode_steps=500,
        reward_threshold=475.0,
    )


class Truncating(gym.Env):
    """4 numbers drifting with the action; never terminal (only its time limit ends it), with
    rewards that depend on the state, so the bootstrap value V(s') matters."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.normal(size=4)
        return self.state.copy(), {}

    def step(self, action):
        self.state = (
            0.8 * self.state + (0.3 if action else -0.3) + 0.1 * self.np_random.normal(size=4)
        )
        return self.state.copy(), float(np.tanh(self.state[0])), False, False, {}


if "Truncating-v0" not in gym.registry:
    gym.register("Truncating-v0", entry_point=Truncating, max_episode_steps=TIME_LIMIT)


# -- hub faults -------------------------------------------------------------------------------


class RecordingAdam(SharedAdam):
    """A SharedAdam that writes every gradient it applies into the shared ``log`` at row
    ``step - 1`` (inside the step, so inside whatever critical section guards it)."""

    def __init__(self, params, log: torch.Tensor, **kw):
        super().__init__(params, **kw)
        self.log = log

    def _apply(self, grad):
        super()._apply(grad)
        self.log[int(self.step_count) - 1].copy_(grad)


class FaultyAdam(SharedAdam):
    """A SharedAdam whose N-th step (``killstep@N`` in QA3C_FAULT, or ``kill_at``) is cut short:
    the moments are written, then the process SIGKILLs itself (or, with ``stall``, marks
    ``inside`` and sleeps until killed) before the parameters are."""

    def __init__(self, params, kill_at: int | None = None, inside=None, **kw):
        super().__init__(params, **kw)
        self.kill_at, self.inside = kill_at, inside

    def _apply(self, grad):
        f = _faults()
        kill_at = self.kill_at or int(f.get("killstep", 0))
        if int(self.step_count) + 1 != kill_at or ("once" in f and not _first(f["once"])):
            return super()._apply(grad)
        b1, b2 = self.betas
        self.step_count += 1
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        if self.inside is not None:
            self.inside.value = os.getpid()
            time.sleep(60)
        os.kill(os.getpid(), signal.SIGKILL)

    def step_many(self, grads, out, rows):
        """As SharedAdam.step_many (one version bracket, one backup), step by step through
        :meth:`_apply` when the batch holds the step to cut short."""
        kill_at = self.kill_at or int(_faults().get("killstep", 0))
        t0 = int(self.step_count)
        if not t0 < kill_at <= t0 + len(grads):
            return super().step_many(grads, out, rows)
        self.version[0] += 1  # odd: live state being written, for the whole batch
        for g, row in zip(grads, rows):
            self._apply(g)  # the kill_at-th one SIGKILLs this process halfway
            out[row] = self.params
        self.version[0] += 1
        self._save_backup()


def grads_of(rank: int, n: int, dim: int) -> torch.Tensor:
    """The ``n`` gradients process ``rank`` pushes (distinct per rank and index)."""
    return torch.randn(
        n, dim, generator=torch.Generator().manual_seed(1000 + rank), dtype=torch.float64
    )


def push_many(hub, rank: int, n: int, gate=None) -> None:
    """Spawned target: push ``n`` gradients through ``hub.push_pull`` as fast as possible
    (with ``gate``, a shared byte array: set ``gate[rank]``, then wait for ``gate[-1]``, so
    that all processes push at the same time)."""
    local = torch.empty_like(hub.adam.params)
    if gate is not None:
        gate[rank] = 1
        while not gate[-1]:
            time.sleep(0.001)
    for g in grads_of(rank, n, local.numel()):
        hub.push_pull(g, local)


def push_batches(hub, rank: int, n: int, batch: int) -> None:
    """Spawned target: push the same ``n`` gradients as :func:`push_many`, ``batch`` at a time
    through ``hub.push_pull_many`` (the learner loop's path)."""
    grads = grads_of(rank, n, hub.adam.params.numel())
    thetas = torch.empty(batch, grads.shape[1], dtype=torch.float64)
    for lo in range(0, n, batch):
        chunk = grads[lo : lo + batch]
        hub.push_pull_many(chunk, thetas, range(len(chunk)))


def hold_lock(hub, inside, record_owner: bool) -> None:
    """Spawned target: take the hub lock and stall inside it until killed. Without
    ``record_owner`` it stops right after the raw acquire (the window before a holder records
    itself, or after it cleared its record and before releasing)."""
    hub.lock.acquire()
    if record_owner:
        hub.owner.value = os.getpid()
    inside.value = os.getpid()
    time.sleep(60)
