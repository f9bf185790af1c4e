"""Test-only fault injection: a CartPole that crashes, hangs, slows down or emits NaN rewards.

Importing this module registers ``qa3c_faults:FaultyCartPole-v0`` (gymnasium imports the module
named before the colon, also in spawned worker processes, as long as ``tests/`` is on the path).
The faults are read from the ``QA3C_FAULT`` environment variable, a comma-separated list of:

* ``raise@N``: raise RuntimeError("injected fault") at this process's N-th reset;
* ``once=PATH``: make ``raise`` happen only once across all processes (PATH: a marker file);
* ``nan@K``: every K-th step of this process returns a NaN reward;
* ``slow@MS``: sleep MS milliseconds per step;
* ``hang=PATH``: while the file PATH exists, every step sleeps 60 s (a worker that ignores
  the stop request).
"""

from __future__ import annotations

import math
import os
import time

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

ENV_ID = "qa3c_faults:FaultyCartPole-v0"


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
