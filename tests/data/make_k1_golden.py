"""Regenerate tests/data/k1_golden.pt: the one-learner worker loop of commit f9ee059 (before
many actor-learners per process), run in-process on a serial hub. Kept for provenance; it
imports `run_worker` with the old hub protocol, so it runs only on that commit:
`git worktree add /tmp/old f9ee059 && cd /tmp/old && python tests/data/make_k1_golden.py`."""

import torch

from qa3c_qiskit.a3c import A3CSettings, run_worker
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.optim import SharedAdam


class Hub:
    def __init__(self, flat, budget):
        self.adam = SharedAdam(flat.clone(), lr=5e-3)
        self.budget, self.claimed, self.steps, self.records = budget, 0, 0, []

    def claim_episode(self):
        if self.claimed >= self.budget:
            return False
        self.claimed += 1
        return True

    def push_pull(self, g, local):
        self.adam.step(g)
        local.copy_(self.adam.params)

    def pull(self, local):
        local.copy_(self.adam.params)

    def add_steps(self, n):
        self.steps += n
        return self.steps

    def episode_done(self, r):
        self.records.append(r)

    def should_stop(self):
        return False

    def nonfinite(self):
        raise AssertionError


out = {}
for model, env, n, seed in [
    ("classical", "CartPole-v1", 40, 3),
    ("quantum", "CartPole-v1", 12, 5),
    ("classical", "MiniGrid-SimpleCrossingS9N1-v0", 3, 1),
]:
    from qa3c_qiskit.envs import env_info

    info = env_info(env)
    spec = ModelSpec(info.obs_dim, info.n_actions, model)
    torch.manual_seed(seed)
    g = ActorCritic(spec)
    hub = Hub(g.flat, n)
    run_worker(0, seed, env, spec, A3CSettings(), hub)
    out[f"{model}/{env}"] = {
        "seed": seed,
        "episodes": n,
        "init": g.flat.clone(),
        "final": hub.adam.params.clone(),
        "step": int(hub.adam.step_count),
        "returns": [r["return"] for r in hub.records],
        "lengths": [r["length"] for r in hub.records],
        "env_steps": [r["env_steps"] for r in hub.records],
    }
    print(model, env, out[f"{model}/{env}"]["returns"][:10], int(hub.adam.step_count))
torch.save(out, "tests/data/k1_golden.pt")
