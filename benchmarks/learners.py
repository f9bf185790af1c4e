"""Env steps/s of ONE process hosting K actor-learners (the real loop, batched acting and
per-learner updates), for K = 1, 8, 40.

Runs :func:`qa3c_qiskit.a3c.run_learners` in this process on one torch thread, against an
in-process hub around a real :class:`~qa3c_qiskit.optim.SharedAdam` (what the local runner's
shared-memory hub does, minus the lock), for the quantum agent on the exact ``statevector``
backend and for the classical twin, on CartPole-v1 and MiniGrid-SimpleCrossingS9N1; then the
wall time per env step of the quantum agent on ``aer_shots`` (Aer, 1,024 shots, parameter
shift) and ``aer_shots_spsa`` (SPSA gradients) at K = 1 and 40, for the whole loop and for
acting alone. The statevector rows use the fused NumPy path (:mod:`qa3c_qiskit.fused`); one row
repeats the quantum CartPole row on the autograd path (``QA3C_FUSED=0``) for comparison.

    python benchmarks/learners.py                 # the full table (~3-4 min on 2 cores)
    python benchmarks/learners.py --steps 4000 --shots-steps 200
    python benchmarks/learners.py --floor         # K=40 / K=1 against its bound (~2 min)

``--floor`` answers "how far can batching go?": quantum and classical twin at K = 1 and
K = 40 on CartPole-v1, alternated ``--reps`` times (medians), and the time the statevector
engine's compiled forward and adjoint take per learner step at K = 40. The classical twin at
K = 40 is the loop with a nearly free core: a quantum K = 40 / K = 1 ratio of 8 needs the engine
to fit in ``1/(8 * quantum K=1) - 1/(classical K=40)`` per learner step.

An "env step" is one learner's step; a process at K learners does K of them per batched call.
Check with ``ps`` that nothing else runs: on two cores one stray run halves every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from qa3c_qiskit.a3c import A3CSettings, Hub, run_learners
from qa3c_qiskit.envs import env_info
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.optim import SharedAdam

ENVS = ("CartPole-v1", "MiniGrid-SimpleCrossingS9N1-v0")


class BenchHub(Hub):
    """In-process hub: never-ending episode budget, stops after ``max_steps`` env steps. The
    clock starts at the first pull (after models and environments are built)."""

    def __init__(self, flat: torch.Tensor, max_steps: int):
        self.adam = SharedAdam(flat.clone())
        self.max_steps, self.steps, self.start = max_steps, 0, None

    def claim_episode(self) -> bool:
        return True

    def push_pull(self, grad, local_flat) -> None:
        self.adam.step(grad)
        local_flat.copy_(self.adam.params)

    def push_pull_many(self, grads, thetas, slots) -> None:  # as LocalHub, minus the lock
        self.adam.step_many(grads, thetas, slots)

    def pull(self, local_flat) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        local_flat.copy_(self.adam.params)

    def add_steps(self, n: int) -> int:
        self.steps += n
        return self.steps

    def episodes_done(self, records) -> None:
        pass

    def should_stop(self) -> bool:
        return self.steps >= self.max_steps

    def nonfinite(self) -> None:
        pass


def measure(env_id: str, model: str, k: int, steps: int, backend: str = "statevector") -> float:
    """Env steps/s of one process hosting ``k`` learners (after a short warm-up)."""
    info = env_info(env_id)
    spec = ModelSpec(info.obs_dim, info.n_actions, model, backend=backend)
    torch.manual_seed(0)
    flat = ActorCritic(spec).flat
    learners = [(i, i) for i in range(k)]
    run_learners(0, learners, env_id, spec, A3CSettings(), BenchHub(flat, min(steps, 10 * k)))
    hub = BenchHub(flat, steps)
    run_learners(0, learners, env_id, spec, A3CSettings(), hub)
    return hub.steps / (time.perf_counter() - hub.start)


def measure_acting(k: int, backend: str, reps: int = 20) -> float:
    """ms of wall time per env step spent choosing the K learners' actions (one batched call
    of the quantum layer per step, no updates)."""
    info = env_info("CartPole-v1")
    spec = ModelSpec(info.obs_dim, info.n_actions, "quantum", backend=backend)
    torch.manual_seed(0)
    model = ActorCritic(spec)
    thetas = model.flat.detach().repeat(k, 1)
    obs = torch.randn(k, info.obs_dim, dtype=torch.float64)
    with torch.no_grad():
        model.batched_logits(thetas, obs)  # build the backend's objects
        t0 = time.perf_counter()
        for _ in range(reps):
            model.batched_logits(thetas, obs)
    model.close()
    return 1e3 * (time.perf_counter() - t0) / reps / k


def engine_us_per_step(k: int, steps: int) -> float:
    """µs per learner step spent in the statevector engine's forward and adjoint kernels
    (quantum, CartPole-v1, K learners): the executor's two entry points, timed in place."""
    from qa3c_qiskit.engine.numba_exec import NumbaExecutor

    spent = [0.0]
    originals = {name: getattr(NumbaExecutor, name) for name in ("forward", "backward")}

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0

        return wrapper

    for name, fn in originals.items():
        setattr(NumbaExecutor, name, timed(fn))
    try:
        measure("CartPole-v1", "quantum", k, 2 * k)  # warm-up, then count from zero
        spent[0] = 0.0
        measure("CartPole-v1", "quantum", k, steps)
    finally:
        for name, fn in originals.items():
            setattr(NumbaExecutor, name, fn)
    return 1e6 * spent[0] / steps


def floor(steps: int, reps: int) -> None:
    """The ``--floor`` table (see the module docstring)."""
    rows = [("quantum", 1), ("quantum", 40), ("classical", 1), ("classical", 40)]
    for model, k in rows:  # compile and warm up
        measure("CartPole-v1", model, k, 2000)
    runs = {row: [] for row in rows}
    for _ in range(reps):
        for model, k in rows:
            runs[(model, k)].append(measure("CartPole-v1", model, k, steps))
    print(f"CartPole-v1, one process, one torch thread, {steps} env steps per row, {reps} reps\n")
    print("| model | K | median env steps/s | runs |")
    print("|---|---:|---:|---|")
    med = {}
    for (model, k), rates in runs.items():
        med[(model, k)] = statistics.median(rates)
        cells = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {model} | {k} | {med[(model, k)]:,.0f} | {cells} |")
    q1, q40, c40 = med[("quantum", 1)], med[("quantum", 40)], med[("classical", 40)]
    budget = 1e6 * (1 / (8 * q1) - 1 / c40)
    engine = engine_us_per_step(40, steps)
    print(f"\nquantum K=40 / K=1: {q40 / q1:.2f}x (target 8x = {8 * q1:,.0f} env steps/s)")
    print(f"classical twin K=40 / quantum K=1: {c40 / q1:.2f}x (the loop with a nearly free core)")
    print(f"engine budget for 8x: {budget:.1f} µs per learner step")
    print(f"engine today at K=40: {engine:.1f} µs per learner step (forward + adjoint, timed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8000, help="env steps per statevector row")
    ap.add_argument("--shots-steps", type=int, default=400, help="env steps per aer_shots row")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 40])
    ap.add_argument("--floor", action="store_true", help="only the K=40 / K=1 bound table")
    ap.add_argument("--reps", type=int, default=3, help="alternated reps for --floor")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.floor:
        floor(max(args.steps, 20000), args.reps)
        return
    print(f"one process, one torch thread; {args.steps} env steps per row\n")
    print(
        f"| env | model | {' | '.join(f'K={k} steps/s' for k in args.ks)} | K={args.ks[-1]} / K=1 |"
    )
    print("|---|---|" + "---:|" * (len(args.ks) + 1))
    for env_id in ENVS:
        for model in ("quantum", "classical"):
            rates = [measure(env_id, model, k, args.steps) for k in args.ks]
            name = "quantum (statevector)" if model == "quantum" else "classical twin"
            cells = " | ".join(f"{r:,.0f}" for r in rates)
            print(f"| {env_id} | {name} | {cells} | {rates[-1] / rates[0]:.1f}x |", flush=True)
            if model == "quantum" and env_id == ENVS[0]:  # the autograd path, for comparison
                os.environ["QA3C_FUSED"] = "0"
                slow = [measure(env_id, model, k, args.steps) for k in args.ks]
                del os.environ["QA3C_FUSED"]
                cells = " | ".join(f"{r:,.0f} ({f / r:.2f}x)" for r, f in zip(slow, rates))
                print(
                    f"| {env_id} | quantum, autograd path (QA3C_FUSED=0; fused speed-up) | "
                    f"{cells} | {slow[-1] / slow[0]:.1f}x |",
                    flush=True,
                )
    print(
        "\nQiskit backends (1,024 shots), CartPole-v1, quantum, the whole loop and acting alone:\n"
    )
    print(
        "| backend | K | env steps/s | ms of wall time per env step | acting only, ms per env step |"
    )
    print("|---|---:|---:|---:|---:|")
    for backend in ("aer_shots", "aer_shots_spsa"):
        for k in (1, 40):
            rate = measure("CartPole-v1", "quantum", k, max(args.shots_steps, 2 * k), backend)
            act = measure_acting(k, backend)
            print(f"| {backend} | {k} | {rate:,.0f} | {1e3 / rate:.2f} | {act:.3f} |", flush=True)


if __name__ == "__main__":
    main()
