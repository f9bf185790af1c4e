"""Environment factory: flat observations, action counts, errors, truncation flags."""

import numpy as np
import pytest

from qa3c_qiskit.envs import env_info, make_env


def test_minigrid_observation_is_flattened_view():
    env = make_env("MiniGrid-SimpleCrossingS9N1-v0")
    obs, _ = env.reset(seed=3)
    assert obs.shape == (147,) and obs.dtype == np.float64
    image = env.unwrapped.gen_obs()["image"]
    np.testing.assert_array_equal(obs, image.reshape(-1).astype(np.float64))
    assert env.unwrapped.max_steps == 4 * 9 * 9
    assert env_info("MiniGrid-SimpleCrossingS9N1-v0").reward_threshold == 0.9


def test_minigrid_reward_is_papers_formula():
    env = make_env("MiniGrid-SimpleCrossingS9N1-v0")
    env.reset(seed=0)
    base = env.unwrapped
    base.step_count = 10
    assert base._reward() == pytest.approx(1 - 0.9 * 10 / 324)


def test_cartpole_truncates_at_time_limit():
    import gymnasium as gym

    env = make_env("CartPole-v1")
    env.reset(seed=0)
    limit = env
    while not isinstance(limit, gym.wrappers.TimeLimit):
        limit = limit.env
    assert limit._max_episode_steps == 500
    limit._elapsed_steps = 499
    _, _, terminated, truncated, _ = env.step(0)
    assert truncated and not terminated


@pytest.mark.parametrize(
    "env_id, fragment",
    [("Pendulum-v1", "action space"), ("NoSuchEnv-v0", "not a registered environment")],
)
def test_unsupported_env_is_one_line_error(env_id, fragment):
    with pytest.raises(ValueError) as err:
        make_env(env_id)
    msg = str(err.value)
    assert fragment in msg and env_id in msg and "CartPole-v1" in msg and "\n" not in msg
