"""Per-sample cost of the exact statevector engine on the paper's circuit (8 qubits, 2 layers,
double CNOT ring, <Z_i> readout): microseconds per sample for a forward pass (no grad) and a
forward + adjoint backward, at batch sizes 1, 8, 40, 80, with shared weights ``[n_w]`` and with
per-sample weights ``[B, n_w]`` (many actor-learners per process).

    python benchmarks/engine.py                      # this checkout's engine
    python benchmarks/engine.py --before f9ee059     # and an earlier commit's, in the same run
    python benchmarks/engine.py --qiskit             # and qiskit.quantum_info.Statevector

``--before REV`` loads ``qa3c_qiskit/engine.py`` and ``engine_kernels.py`` of that commit (the
single-module engine, before ``qa3c_qiskit/engine/``) into a temporary package and times it
interleaved with the current one (same load on the machine for both); commits before per-sample
weights existed get ``-`` in the per-sample rows. Each figure is the best of several rounds.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qa3c_qiskit.circuit import build_vqc  # noqa: E402
from qa3c_qiskit.engine import CircuitEngine  # noqa: E402

BATCHES = (1, 8, 40, 80)


def load_before(rev: str, vqc):
    """The engine of commit ``rev`` (single-module layout), numba executor."""
    tmp = Path(tempfile.mkdtemp(prefix="qa3c_before_"))
    pkg = tmp / "qa3c_before"
    pkg.mkdir()
    for name in ("engine.py", "engine_kernels.py"):
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:qa3c_qiskit/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (pkg / name).write_text(
            src.replace("from .circuit import", "from qa3c_qiskit.circuit import")
        )
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    mod = importlib.import_module("qa3c_before.engine")
    return mod.CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables, mode="numba")


def make_calls(engine, batch: int, per_sample: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, generator=gen, dtype=torch.float64)
    shape = (batch, 48) if per_sample else (48,)
    w = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5
    up = torch.randn(batch, 8, generator=gen, dtype=torch.float64)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            engine(x, w)

    def forward_backward():
        (engine(xg, wg) * up).sum().backward()
        xg.grad = wg.grad = None

    try:
        forward_backward()
    except Exception:  # an engine without per-sample weights
        return None
    return forward, forward_backward


def best_times(fns: list, rounds: int, budget: float = 0.005) -> list[float]:
    """Per call seconds of each fn (best round), the fns interleaved round by round."""
    reps = []
    for fn in fns:
        fn()
        t0 = time.perf_counter()
        fn()
        reps.append(max(1, int(budget / max(time.perf_counter() - t0, 1e-7))))
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(reps[i]):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / reps[i])
    return best


def qiskit_per_sample(vqc, n: int = 20) -> float:
    from qiskit.quantum_info import Statevector

    rng = np.random.default_rng(0)
    params = list(vqc.inputs) + list(vqc.weights)
    t0 = time.perf_counter()
    for _ in range(n):
        bound = vqc.circuit.assign_parameters(dict(zip(params, rng.normal(size=len(params)))))
        sv = Statevector(bound)
        [sv.expectation_value(o) for o in vqc.observables]
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=None, help="also time this commit's engine")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--qiskit", action="store_true", help="also time Qiskit's Statevector")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    vqc = build_vqc(8, 2, "double_ring")
    engines = {"now": CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables)}
    if args.before:
        engines["before"] = load_before(args.before, vqc)
    head = f"{'B':>3} {'weights':>10} | {'fwd':>7} {'fwd+bwd':>8}"
    if args.before:
        head += f" | {'fwd before':>10} {'fwd+bwd before':>14} | {'speed-up f / f+b':>16}"
    print(f"engine: microseconds per sample (best of {args.rounds} rounds)")
    print(head)
    print("-" * len(head))
    for batch in BATCHES:
        for per_sample in (False, True):
            calls = {k: make_calls(e, batch, per_sample) for k, e in engines.items()}
            names = [k for k, c in calls.items() if c is not None]
            times = best_times([f for k in names for f in calls[k]], args.rounds)
            us = {
                k: [t * 1e6 / batch for t in times[2 * i : 2 * i + 2]] for i, k in enumerate(names)
            }
            now = us["now"]
            row = f"{batch:>3} {'per-sample' if per_sample else 'shared':>10} | "
            row += f"{now[0]:>7.2f} {now[1]:>8.2f}"
            if args.before:
                old = us.get("before")
                if old is None:
                    row += f" | {'-':>10} {'-':>14} | {'-':>16}"
                else:
                    ratio = f"{old[0] / now[0]:.1f}x / {old[1] / now[1]:.1f}x"
                    row += f" | {old[0]:>10.2f} {old[1]:>14.2f} | {ratio:>16}"
            print(row, flush=True)
    if args.qiskit:
        print(f"qiskit.quantum_info.Statevector: {qiskit_per_sample(vqc) * 1e6:.0f} us per sample")


if __name__ == "__main__":
    main()
