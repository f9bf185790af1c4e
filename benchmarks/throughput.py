"""Env steps/s of one full A3C worker loop: classical twin vs quantum agent on two backends.

Runs the real worker loop with one actor-learner (:func:`qa3c_qiskit.a3c.run_learners`, K = 1;
``benchmarks/learners.py`` measures K > 1): act every step, update every
S = 5 steps, push the gradient into a real :class:`~qa3c_qiskit.optim.SharedAdam` and pull the
parameters back) in this process, on one torch thread, for

* ``classical``: the classical twin (each VQC replaced by Linear(8, 8));
* ``statevector``: the quantum agent on the in-package exact engine (the default backend);
* ``TorchConnector``: the quantum agent with each VQC wrapped as
  ``TorchConnector(EstimatorQNN(...))`` with qiskit-machine-learning's defaults (its default
  estimator and ``ParamShiftEstimatorGradient``); a few updates suffice (~30 s each).

and prints steps/s, the ratio to the classical twin, the time per action and per update.

    python benchmarks/throughput.py                     # CartPole-v1 and MiniGrid S9N1
    python benchmarks/throughput.py --steps 5000 --tc-steps 0   # skip the slow row
    QA3C_ENGINE=reference python benchmarks/throughput.py --tc-steps 0  # the torch reference
"""

from __future__ import annotations

import argparse
import contextlib
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from qa3c_qiskit import models
from qa3c_qiskit.a3c import A3CSettings, Hub, Segment, _update, run_learners, sample_actions
from qa3c_qiskit.engine import engine_mode
from qa3c_qiskit.envs import env_info, make_env
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.optim import SharedAdam
from qa3c_qiskit.threads import limit_blas_threads

ENVS = ("CartPole-v1", "MiniGrid-SimpleCrossingS9N1-v0")


class BenchHub(Hub):
    """A minimal in-process hub (the protocol of :mod:`qa3c_qiskit.a3c`) around a real
    SharedAdam; stops the worker after ``max_steps`` env steps. The clock starts at the
    worker's first pull, i.e. after its model and environment are built."""

    def __init__(self, flat: torch.Tensor, max_steps: int):
        self.adam = SharedAdam(flat.clone())
        self.max_steps = max_steps
        self.steps = 0
        self.updates = 0
        self.start = self.cpu_start = None

    def claim_episode(self) -> bool:
        return True

    def push_pull(self, grad: torch.Tensor, local_flat: torch.Tensor) -> None:
        self.adam.step(grad)
        local_flat.copy_(self.adam.params)
        self.updates += 1

    def push_pull_many(self, grads: torch.Tensor, thetas: torch.Tensor, slots) -> None:
        self.adam.step_many(grads, thetas, slots)  # as LocalHub, minus the lock
        self.updates += len(grads)

    def pull(self, local_flat: torch.Tensor) -> None:
        if self.start is None:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        local_flat.copy_(self.adam.params)

    def add_steps(self, n: int) -> int:
        self.steps += n
        return self.steps

    def episodes_done(self, records: list[dict]) -> None:
        pass

    def should_stop(self) -> bool:
        return self.steps >= self.max_steps

    def nonfinite(self) -> None:
        pass


class TorchConnectorCore(nn.Module):
    """The VQC as ``TorchConnector(EstimatorQNN)`` with qiskit-machine-learning's defaults."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        from qiskit_machine_learning.connectors import TorchConnector
        from qiskit_machine_learning.neural_networks import EstimatorQNN

        from qa3c_qiskit.circuit import build_vqc

        vqc = build_vqc(spec.n_qubits, spec.n_layers, spec.entangler)
        qnn = EstimatorQNN(
            circuit=vqc.circuit,
            observables=vqc.observables,
            input_params=list(vqc.inputs),
            weight_params=list(vqc.weights),
            input_gradients=True,
        )
        self.connector = TorchConnector(qnn, 0.01 * np.random.standard_normal(len(vqc.weights)))
        self.connector.weight.is_quantum = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.connector(x).to(torch.float64)

    def functional(self, x: torch.Tensor, rows: torch.Tensor, n_grad=None) -> torch.Tensor:
        """The loop's per-sample-weights call. With one learner the rows hold at most two
        weight vectors (the actor's and the critic's VQC): one TorchConnector autograd call
        per distinct vector, as a TorchConnector model makes one call per network."""
        from qiskit_machine_learning.connectors.torch_connector import _TorchNNFunction

        qnn = self.connector.neural_network
        _, group = torch.unique(rows.detach(), dim=0, return_inverse=True)
        out = torch.zeros(x.shape[0], qnn.output_shape[0], dtype=torch.float64)
        for g in group.unique().tolist():
            idx = (group == g).nonzero().squeeze(1)
            val = _TorchNNFunction.apply(x[idx], rows[idx[0]], qnn, False).to(torch.float64)
            out = out.index_copy(0, idx, val)
        return out


@contextlib.contextmanager
def core_factory(kind: str):
    """Build the agent's cores with ``kind``: the real run_worker builds its own model, so the
    TorchConnector row swaps the model module's default core factory for this benchmark."""
    if kind != "torchconnector":
        yield
        return
    original = models.default_core_factory
    models.default_core_factory = lambda spec: lambda: TorchConnectorCore(spec)
    try:
        yield
    finally:
        models.default_core_factory = original


def spec_for(env_id: str, kind: str) -> ModelSpec:
    info = env_info(env_id)
    return ModelSpec(
        info.obs_dim, info.n_actions, "classical" if kind == "classical" else "quantum"
    )


def time_act_update(
    env_id: str, spec: ModelSpec, reps: int, rounds: int = 3
) -> tuple[float, float]:
    """(ms per action, ms per update) of one model on real observations of ``env_id``: the
    best of ``rounds`` rounds of ``reps`` calls (after one warm-up call if rounds > 1)."""
    model = ActorCritic(spec)
    env = make_env(env_id)
    obs = [torch.from_numpy(env.reset(seed=0)[0])]
    for _ in range(5):
        obs.append(torch.from_numpy(env.step(env.action_space.sample())[0]))
    env.close()
    gen = torch.Generator().manual_seed(0)
    hub = BenchHub(model.flat, max_steps=0)
    settings = A3CSettings()
    thetas = model.flat.detach().clone()[None]  # one learner's parameters
    learner = SimpleNamespace(slot=0)

    def act():  # what the loop does per env step at K = 1
        with torch.no_grad():
            probs = torch.softmax(model.batched_logits(thetas, obs[0][None]), dim=-1)
        sample_actions(probs, [gen])

    def update():
        seg = Segment(obs[:5], [0, 1, 0, 1, 0], [1.0] * 5, obs[5], False)
        _update(model, thetas, [(learner, seg)], settings, hub)

    out = []
    for fn in (act, update):
        if rounds > 1:
            fn()
        best = float("inf")
        for _ in range(rounds):  # best of several rounds: the machine may be shared
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - t0) / reps * 1e3)
        out.append(best)
    return out[0], out[1]


def run_loop(env_id: str, kind: str, steps: int, seed: int) -> dict:
    """Env steps/s of the real worker loop for ``steps`` env steps."""
    spec = spec_for(env_id, kind)
    with core_factory(kind):
        ActorCritic(spec)  # compile/cache the engine before the clock starts
        hub = BenchHub(ActorCritic(spec).flat, steps)
        run_learners(0, [(0, seed)], env_id, spec, A3CSettings(), hub)
        elapsed = time.perf_counter() - hub.start
        cpu = time.process_time() - hub.cpu_start
        if kind == "torchconnector":  # ~30 s per update: one timed call each
            act_ms, update_ms = time_act_update(env_id, spec, reps=1, rounds=1)
        else:
            act_ms, update_ms = time_act_update(env_id, spec, max(1, min(200, steps // 10)))
    return {
        "steps": hub.steps,
        "updates": hub.updates,
        "seconds": elapsed,
        "steps_per_s": hub.steps / elapsed,
        "cpu_steps_per_s": hub.steps / cpu,
        "act_ms": act_ms,
        "update_ms": update_ms,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="env steps per fast row")
    parser.add_argument(
        "--tc-steps", type=int, default=10, help="env steps of the TorchConnector row (0: skip)"
    )
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    limit_blas_threads(1)
    rows = []
    for env_id in args.envs:
        agents = [("classical", args.steps), ("statevector", args.steps)]
        if args.tc_steps > 0:
            agents.append(("torchconnector", args.tc_steps))
        base = None
        for kind, steps in agents:
            r = run_loop(env_id, kind, steps, args.seed)
            base = (r["steps_per_s"], r["cpu_steps_per_s"]) if kind == "classical" else base
            r.update(
                env=env_id,
                agent=kind,
                ratio=r["steps_per_s"] / base[0],
                cpu_ratio=r["cpu_steps_per_s"] / base[1],
            )
            rows.append(r)
            print(f"  {env_id} {kind}: {r['steps']} steps in {r['seconds']:.2f} s", flush=True)
    names = {
        "classical": "classical twin",
        "statevector": "quantum, statevector",
        "torchconnector": "quantum, TorchConnector(EstimatorQNN)",
    }
    print()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, one worker in-process; "
        f"statevector engine: {engine_mode()} (QA3C_ENGINE=numba|reference)"
    )
    print("(steps/s: wall clock; CPU steps/s: per second of this process's CPU time, which a busy")
    print(" shared machine distorts less; ms/action, ms/update: best of 3 rounds, wall clock;")
    print(" TorchConnector: one call each)")
    print(
        "| env | agent | env steps/s | vs classical | CPU steps/s | vs classical "
        "| ms/action | ms/update | steps (updates) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['env']} | {names[r['agent']]} | {r['steps_per_s']:.4g} | "
            f"{r['ratio']:.3g}x | {r['cpu_steps_per_s']:.4g} | {r['cpu_ratio']:.3g}x | "
            f"{r['act_ms']:.3g} | {r['update_ms']:.3g} | {r['steps']} ({r['updates']}) |"
        )


if __name__ == "__main__":
    main()
