"""Backend benchmark: time per action and per A3C update, primitive calls and circuits per
update, and the error of shot-based <Z_i> against exact values.

    python benchmarks/backends.py                 # all rows (the baseline takes ~1 min)
    python benchmarks/backends.py --no-baseline --actions 20
    python benchmarks/backends.py --only density_noisy --noisy-before   # before/after
    python benchmarks/backends.py --only aer_shots,aer_shots_spsa         # gradients compared

``--noisy-before`` adds two rows for ``density_noisy``'s noise model (formerly ``aer_noisy``)
run on Aer's density matrix: with the noise model as first built (every gate error of the 8
logical qubits) and with the compact model (only the gates the circuit uses); the plain
``density_noisy`` row is the in-package density-matrix engine. ``aer_shots_spsa`` is
``aer_shots`` with SPSA gradients (3 circuits per sample instead of 1 + 2G).

Rows: each built-in backend through the registry, plus ``qiskit-ml default`` =
``TorchConnector(EstimatorQNN)`` with qiskit-machine-learning's default
``ParamShiftEstimatorGradient`` on exact Aer (the path this package replaces; it has no
per-sample weights, so its update is the single-learner ``a3c_loss`` + ``local_gradient``).
The model is the paper's CartPole actor-critic (8 qubits, 2 layers); an update is the
training loop's own update path, :func:`qa3c_qiskit.a3c.segment_gradients` on one closed 5-step segment: the actor
on its 5 states and the critic on 5 + the bootstrap state (forward-only: its value is detached),
gradients of both, one primitive call on the Qiskit backends (parameter shift: 10 x (1 + 2G) + 1
= 1,291 circuits, G = 64; SPSA: 10 x 3 + 1 = 31). Calls / PUBs / circuits are what the counting
wrapper around the estimator saw in the last update, summed over actor and critic (circuits =
parameter sets executed).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from qa3c_qiskit.a3c import A3CSettings, Segment, a3c_loss, local_gradient, segment_gradients
from qa3c_qiskit.backends import QiskitLayer, StatevectorLayer, noise, quantum_layer_factory
from qa3c_qiskit.backends.estimators import CountingEstimator
from qa3c_qiskit.backends.gradient import BuiltQNN
from qa3c_qiskit.models import ActorCritic, ModelSpec


class DefaultGradientLayer(QiskitLayer):
    """qiskit-machine-learning's defaults: EstimatorQNN + ParamShiftEstimatorGradient, exact Aer."""

    def __init__(self):
        super().__init__(make_execution=None)

    @property
    def built(self):
        if self._built is None:
            from qiskit_aer.primitives import EstimatorV2
            from qiskit_machine_learning.connectors import TorchConnector
            from qiskit_machine_learning.neural_networks import EstimatorQNN

            from qa3c_qiskit.circuit import build_vqc

            vqc = build_vqc(*self._vqc_args)
            est = CountingEstimator(EstimatorV2())
            qnn = EstimatorQNN(
                circuit=vqc.circuit,
                estimator=est,
                observables=vqc.observables,
                input_params=list(vqc.inputs),
                weight_params=list(vqc.weights),
                input_gradients=True,
                default_precision=0.0,
            )
            connector = TorchConnector(qnn)
            connector._weights = self.weight
            self._built = BuiltQNN(qnn, connector, None)
        return self._built

    def close(self):
        self._built = None


@contextlib.contextmanager
def full_noise_model():
    """``density_noisy``'s noise as first built: the noise model holds every gate error of the 8 logical
    qubits (all 56 ordered CX pairs, reset/id/x/sx), not only those the circuit uses."""
    compact = noise.logical_noise_model
    noise.logical_noise_model = lambda device, n, circuit=None: compact(device, n)
    try:
        yield
    finally:
        noise.logical_noise_model = compact


def counters(model) -> list:
    cores = (model.actor.core, model.critic.core)
    return [c.counter for c in cores if isinstance(c, QiskitLayer)]


def bench_model(model, actions: int, updates: int, single_learner: bool = False) -> dict:
    """ms per action, s per update (median) and the counters of the last update.
    ``single_learner``: the update as ``a3c_loss`` + ``local_gradient`` (shared weights; for the
    qiskit-ml baseline, which has no per-sample-weight path)."""
    obs = torch.randn(6, 4, dtype=torch.float64)
    model.act(obs[0])  # build the backend, warm caches
    t0 = time.perf_counter()
    for i in range(actions):
        model.act(obs[i % 6])
    t_act = (time.perf_counter() - t0) / actions
    row = {"action_ms": 1e3 * t_act}
    if updates == 0:
        return row
    settings = A3CSettings()
    segment = Segment(
        obs=list(obs[:5]),
        actions=[0, 1, 1, 0, 1],
        rewards=[1.0] * 5,
        next_obs=obs[5],
        terminated=False,
    )
    thetas = model.flat.detach()[None].clone()  # one learner's parameters [1, n_params]
    times = []
    for _ in range(updates):
        for c in counters(model):
            c.reset()
        t0 = time.perf_counter()
        if single_learner:
            loss = a3c_loss(model, obs[:5], torch.tensor(segment.actions), segment.rewards,
                            obs[5], False, settings)  # fmt: skip
            grads = local_gradient(model, loss)
        else:
            grads, _ = segment_gradients(model, thetas, [segment], settings)
        times.append(time.perf_counter() - t0)
    assert torch.isfinite(grads).all()
    cs = counters(model)
    row.update(
        update_s=float(np.median(times)),
        calls=sum(c.calls for c in cs) if cs else None,
        pubs=sum(c.pubs for c in cs) if cs else None,
        **{"circuits/update": sum(c.circuits for c in cs) if cs else None},
    )
    return row


def shot_mae(backend: str, shots: int, batch: int = 8) -> float:
    """Mean |<Z_i>_shots - <Z_i>_exact| over ``batch`` random inputs and all 8 qubits."""
    torch.manual_seed(0)
    layer = quantum_layer_factory(ModelSpec(4, 2, backend=backend, shots=shots))()
    layer.weight.data.copy_(torch.randn_like(layer.weight))
    exact = StatevectorLayer()
    exact.weight.data.copy_(layer.weight.data)
    x = torch.randn(batch, 8, dtype=torch.float64)
    with torch.no_grad():
        err = (layer(x) - exact(x)).abs().mean()
    layer.close()
    return float(err)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=30, help="timed actions per backend")
    parser.add_argument("--updates", type=int, default=3, help="timed updates per backend")
    parser.add_argument("--no-baseline", action="store_true", help="skip the qiskit-ml default row")
    parser.add_argument(
        "--no-device", action="store_true", help="skip aer_device and ibm_runtime_local (slow)"
    )
    parser.add_argument("--only", default="", help="comma-separated backends to run (default all)")
    parser.add_argument(
        "--noisy-before",
        action="store_true",
        help="add density_noisy rows on Aer's density matrix (full and compact noise model)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    plan = [
        ("statevector", args.actions, args.updates),
        ("aer_statevector", args.actions, args.updates),
        ("aer_shots", args.actions, args.updates),
        ("aer_shots_spsa", args.actions, args.updates),
        ("density_noisy", max(3, args.actions // 5), 1),
    ]
    if not args.no_device:
        plan.append(("aer_device", 3, 0))  # an update is 1,291 routed noisy circuits: skipped
        plan.append(("ibm_runtime_local", 3, 0))  # ~1 s per circuit: an update ~20 min
    variants = {}  # row label -> (backend name or profile path, context)
    if args.noisy_before:
        # density_noisy's noise on Aer's density matrix instead of the in-package engine
        variants = {
            "density_noisy, before (Aer DM, full model)": ("aer_noisy_aer", full_noise_model),
            "density_noisy, Aer DM, compact model": ("aer_noisy_aer", contextlib.nullcontext),
        }
        noisy = next(i for i, row in enumerate(plan) if row[0] == "density_noisy")
        for label in reversed(list(variants)):
            plan.insert(noisy, (label, *plan[noisy][1:]))
    if args.only:
        keep = set(args.only.split(",")) | set(variants)
        plan = [row for row in plan if row[0] in keep]
    for label, n_act, n_upd in plan:
        name, context = variants.get(label, (label, contextlib.nullcontext))
        with context():
            torch.manual_seed(0)
            model = ActorCritic(ModelSpec(4, 2, backend=name))
            row = {"backend": label, **bench_model(model, n_act, n_upd)}
            model.close()
            kind = label.split(",")[0]
            if kind in ("aer_shots", "density_noisy", "aer_device"):
                for shots in (128, 1024, 8192):
                    if kind == "aer_device" and shots > 1024:
                        continue
                    batch = 2 if kind == "aer_device" else 8
                    row[f"mae_{shots}"] = shot_mae(name, shots, batch=batch)
        rows.append(row)
        print_row(row, header=len(rows) == 1)
    if not args.no_baseline and not args.only:
        torch.manual_seed(0)
        model = ActorCritic(ModelSpec(4, 2), core_factory=DefaultGradientLayer)
        label = "qiskit-ml default (exact Aer, a3c_loss)"
        row = {"backend": label, **bench_model(model, 5, 1, single_learner=True)}
        rows.append(row)
        print_row(row, header=False)


COLS = [
    ("backend", "{}", 38),
    ("action_ms", "{:.1f}", 10),
    ("update_s", "{:.3f}", 9),
    ("calls", "{}", 6),
    ("pubs", "{}", 6),
    ("circuits/update", "{:,}", 15),
    ("mae_128", "{:.4f}", 8),
    ("mae_1024", "{:.4f}", 9),
    ("mae_8192", "{:.4f}", 9),
]


def print_row(row: dict, header: bool) -> None:
    if header:
        print("| " + " | ".join(c.ljust(w) for c, _, w in COLS) + " |")
        print("|" + "|".join("-" * (w + 2) for _, _, w in COLS) + "|")
    cells = []
    for c, fmt, w in COLS:
        v = row.get(c)
        cells.append(("-" if v is None else fmt.format(v)).ljust(w))
    print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
