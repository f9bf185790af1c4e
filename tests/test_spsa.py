"""SPSA gradients (profile ``gradient = "spsa"``): unbiased against the exact gradient, a
tolerance that can fail, 3 circuits per sample, profile validation and the cost report.

Statistics of the agreement test: one SPSA draw per row, ``D`` rows per sample, each row's
per-sample input and weight gradients contracted with the same upstream gradient (as in an A3C
update). For every component ``j`` the mean of the ``D`` iid draws has standard error
``s_j / sqrt(D)`` (``s_j`` the draws' sample std), so ``z_j = (mean_j - exact_j) / se_j`` is
~N(0, 1) for an unbiased estimator (CLT; ``D`` = 2000). The test asserts ``max_j |z_j| < z*`` with
the Bonferroni bound for ``M`` components at family-wise level 1e-3:
``z* = Phi^-1(1 - 0.001 / (2 M))`` (~4.4 for M = 112), and the same for the projection of the
mean on the exact gradient's direction (one z per sample, sensitive to a wrong scale): a correct
implementation fails with probability < 0.2% over seeds (the seeds are fixed, so the test is
deterministic). SPSA's own bias is O(c^2), mostly a shrinkage of the gradient: measured over
20,000 draws on this circuit 0.92-0.93x at c = 0.1, 0.70-0.75x at c = 0.2, ~0.98-1.0x at 0.02
(cosine to the exact gradient 0.998 at c <= 0.1). At c = 0.02 it is below the resolution of
2000 draws, so the test holds SPSA to the exact gradient; at c = 0.2 the same test fails.
"""

from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import pytest
import torch
from qiskit.primitives import BaseEstimatorV2, PrimitiveResult

from qa3c_qiskit import backends
from qa3c_qiskit.backends import cost, quantum_layer_factory
from qa3c_qiskit.backends.estimators import (
    CircuitCache,
    as_pauli_ops,
    broadcast_evs,
    counting,
    pub_result,
    submit,
)
from qa3c_qiskit.backends.gradient import BatchedEstimatorQNN, PerSampleQNNFunction, SPSAGradient
from qa3c_qiskit.circuit import build_vqc
from qa3c_qiskit.engine import CircuitEngine
from qa3c_qiskit.models import ModelSpec

DRAWS = 2000
FAMILY_ALPHA = 1e-3


class EngineEstimator(BaseEstimatorV2):
    """An exact EstimatorV2 on the in-package statevector engine (every circuit parameter a
    weight; the engine is held to Qiskit by tests/test_engine.py): fast enough for 10^4 draws."""

    def __init__(self):
        self._engines = CircuitCache()

    def run(self, pubs, *, precision=None):
        return submit(self._run, pubs, precision)

    def _run(self, pubs):
        out = []
        for pub in pubs:
            obs = as_pauli_ops(pub.observables)
            params = list(pub.circuit.parameters)
            engine = self._engines.get(
                pub.circuit,
                lambda c=pub.circuit, p=params, o=obs: CircuitEngine(c, [], p, o),
                key=len(obs),
            )
            values = torch.as_tensor(pub.parameter_values.as_array(params).reshape(-1, len(params)))
            with torch.no_grad():
                terms = engine(torch.zeros(len(values), 0, dtype=torch.float64), values).numpy()
            out.append(pub_result(broadcast_evs(terms, pub), None, 0.0))
        return PrimitiveResult(out, metadata={"version": 2})


@pytest.fixture(scope="module")
def setup():
    """The paper's circuit (8 qubits, 2 layers), 2 samples with their own weights, an upstream
    gradient, and the exact per-sample input and weight gradients by autograd on the engine."""
    vqc = build_vqc(8, 2, "double_ring")
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(2, 8)))
    w = torch.tensor(rng.normal(size=(2, 48)))
    up = torch.tensor(rng.normal(size=(2, 8)))
    engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    (engine(xr, wr) * up).sum().backward()
    exact = torch.cat([xr.grad, wr.grad], dim=1).numpy()  # [2, 8 + 48]
    return vqc, x, w, up, exact


def spsa_draws(setup, c: float, draws: int = DRAWS, seed: int = 1) -> np.ndarray:
    """[2, draws, 56]: per-sample (input, weight) gradient estimates, one SPSA draw per row,
    through the training path (BatchedEstimatorQNN + PerSampleQNNFunction.backward)."""
    vqc, x, w, up, _ = setup
    estimator = counting(EngineEstimator())
    qnn = BatchedEstimatorQNN(
        circuit=vqc.circuit,
        estimator=estimator,
        observables=vqc.observables,
        input_params=list(vqc.inputs),
        weight_params=list(vqc.weights),
        gradient=SPSAGradient(estimator, perturbation=c, seed=seed),
        input_gradients=True,
        precision=0.0,
    )
    xr = x.repeat_interleave(draws, 0).requires_grad_(True)
    wr = w.repeat_interleave(draws, 0).requires_grad_(True)
    y = PerSampleQNNFunction.apply(xr, wr, qnn, True)
    (y * up.repeat_interleave(draws, 0)).sum().backward()
    assert (estimator.calls, estimator.pubs, estimator.circuits) == (1, 1, 3 * 2 * draws)
    return torch.cat([xr.grad, wr.grad], dim=1).numpy().reshape(2, draws, -1)


def z_scores(draws: np.ndarray, reference: np.ndarray, n: int | None = None) -> np.ndarray:
    """(mean of the first ``n`` draws - reference) / (sample std of all draws / sqrt(len))."""
    n = draws.shape[1] if n is None else n
    se = draws.std(axis=1, ddof=1) / np.sqrt(draws.shape[1])
    return (draws[:, :n].mean(axis=1) - reference) / se


def z_star(m: int) -> float:
    """Two-sided Bonferroni bound for ``m`` z-scores at family-wise level FAMILY_ALPHA."""
    return NormalDist().inv_cdf(1 - FAMILY_ALPHA / (2 * m))


def projection_z(draws: np.ndarray, exact: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per sample, the z-score of the draws' mean along the exact gradient's direction ``e``
    against ``reference . e`` (std error from the projected draws): the powerful statistic
    against a wrong *scale* (a component-wise test sees a 10-20% scale error only weakly)."""
    e = exact / np.linalg.norm(exact, axis=1, keepdims=True)
    proj = np.einsum("ndp,np->nd", draws, e)
    se = proj.std(axis=1, ddof=1) / np.sqrt(proj.shape[1])
    return (proj.mean(axis=1) - (reference * e).sum(axis=1)) / se


def agrees(draws: np.ndarray, exact: np.ndarray, reference: np.ndarray) -> bool:
    """Both statistics within their Bonferroni bounds (components; projections)."""
    z = z_scores(draws, reference)
    zp = projection_z(draws, exact, reference)
    return bool(np.abs(z).max() < z_star(z.size) and np.abs(zp).max() < z_star(zp.size))


def test_spsa_mean_agrees_with_exact_gradient_for_inputs_and_weights(setup):
    exact = setup[4]
    d = spsa_draws(setup, c=0.02)
    z = z_scores(d, exact)
    bound = z_star(z.size)
    assert 4.0 < bound < 5.0
    assert np.abs(z[:, :8]).max() < bound, z[:, :8]  # input gradients (through arctan(x), x^2)
    assert np.abs(z[:, 8:]).max() < bound, z[:, 8:]  # weight gradients
    zp = projection_z(d, exact, exact)
    assert np.abs(zp).max() < z_star(zp.size), zp  # no scale error either
    assert agrees(d, exact, exact)
    # the estimates are genuinely noisy (SPSA, not a disguised exact gradient)
    assert (d.std(axis=1) > 0.2 * np.abs(exact).max()).mean() > 0.5


def test_the_tolerance_is_meaningful(setup):
    """The same criterion rejects what is wrong: too few draws held to the tolerance of 2000, a
    gradient 20% too small, the input gradients without the chain rule, and the O(c^2) bias of a
    large perturbation (c = 0.2: ~0.73 x the gradient). (Its resolution at 2000 draws: a 10%
    scale error is ~3 standard errors along the gradient, so c = 0.1's ~8% shrinkage would
    pass; 20% is ~6.)"""
    exact = setup[4]
    d = spsa_draws(setup, c=0.02)
    bound = z_star(exact.size)
    tol = bound * d.std(axis=1, ddof=1) / np.sqrt(DRAWS)
    # tight compared with the gradient itself: each component within ~12% of |grad|
    assert (tol.max(axis=1) < 0.15 * np.linalg.norm(exact, axis=1)).all()
    assert np.abs(z_scores(d, exact, n=20)).max() > bound  # 20 draws do not meet it
    assert not agrees(d, exact, 0.8 * exact)
    no_chain = exact.copy()
    x = setup[1].numpy()
    no_chain[:, :8] *= 1 + x**2  # undo d arctan(x) / dx on the Ry encoding (roughly)
    assert not agrees(d, exact, no_chain)
    assert not agrees(spsa_draws(setup, c=0.2), exact, exact)


def test_default_perturbation_keeps_the_gradient_direction(setup):
    """c = 0.1 (the default): the bias is mostly a uniform shrinkage, the direction is kept."""
    exact = setup[4]
    mean = spsa_draws(setup, c=backends.registry.DEFAULT_SPSA_PERTURBATION).mean(axis=1)
    for m, e in zip(mean, exact):
        cos = m @ e / np.linalg.norm(m) / np.linalg.norm(e)
        scale = m @ e / (e @ e)
        assert cos > 0.97 and 0.8 < scale < 1.0, (cos, scale)


def spsa_profile(tmp_path, extra: str = "", name: str = "spsa_shots") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'kind = "aer"\nshots = 256\nmethod = "statevector"\ngradient = "spsa"\n{extra}'
    )
    return str(path)


def test_spsa_layer_makes_three_circuits_per_sample_per_call(tmp_path):
    """Aer with shots, through the profile: a gradient call = 1 call, 1 PUB, 3 circuits per
    sample (value, theta + c Delta, theta - c Delta) instead of 1 + 2G = 129; an action = 1."""
    spec = ModelSpec(4, 2, backend=spsa_profile(tmp_path, "spsa_seed = 5\n"))
    lay = quantum_layer_factory(spec)()
    counter = lay.counter
    grad = lay.built.qnn.gradient
    assert isinstance(grad, SPSAGradient) and grad.perturbation == 0.1
    assert grad.seed[0] == 5  # [profile spsa_seed, worker seed, layer index]
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    w = (0.1 * torch.randn(5, 48, dtype=torch.float64)).requires_grad_(True)
    counter.reset()
    lay.functional(x, w).sum().backward()
    assert (counter.calls, counter.pubs, counter.circuits) == (1, 1, 3 * 5)
    assert torch.isfinite(w.grad).all() and bool((w.grad.abs().sum(1) > 0).all())
    assert torch.isfinite(x.grad).all()
    counter.reset()
    with torch.no_grad():
        lay.functional(x, w)
    assert (counter.calls, counter.pubs, counter.circuits) == (1, 1, 5)
    # shared-weight forward + backward (TorchConnector): also 3 per sample, one call
    counter.reset()
    lay(x).sum().backward()
    assert (counter.calls, counter.circuits) == (1, 3 * 5)
    lay.close()


def test_report_gives_both_gradients_and_matches_the_counter(tmp_path):
    path = spsa_profile(tmp_path, "spsa_perturbation = 0.05\n")
    r = cost.report(path, n_qubits=2, n_layers=1, update_every=3)
    g = r["circuit"]["parameterized_gates"]
    assert r["per_update"]["circuits_per_segment_by_gradient"] == {
        "param_shift": 6 * (1 + 2 * g) + 1,  # 2S samples + the forward-only bootstrap state
        "spsa": 6 * 3 + 1,
    }
    assert r["per_update"]["circuits_per_segment"] == 19
    assert r["gradient"] == {"gradient": "spsa", "spsa_perturbation": 0.05, "spsa_seed": 0}
    text = cost.format_report(r)
    assert "spsa (c = 0.05 rad" in text and f"param_shift {6 * (1 + 2 * g) + 1}" in text
    lay = quantum_layer_factory(ModelSpec(4, 2, backend=path, n_qubits=2, n_layers=1))()
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    lay.counter.reset()
    w = 0.1 * torch.randn(7, 6, dtype=torch.float64)
    lay.functional(x, w, n_grad=6).sum().backward()  # the last row: the bootstrap state
    assert lay.counter.circuits == r["per_update"]["circuits_per_segment"]
    lay.close()
    assert cost.report("aer_shots_spsa")["per_update"]["circuits_per_segment"] == 31


@pytest.mark.parametrize(
    "extra, needle",
    [
        ('gradient = "finite_diff"\n', "unknown gradient 'finite_diff'; choose one of param_shift"),
        ("spsa_perturbation = 0\n", "spsa_perturbation = 0 is not accepted; expected a float > 0"),
        ("spsa_perturbation = -0.1\n", "spsa_perturbation = -0.1 is not accepted"),
        ('spsa_seed = "x"\n', "spsa_seed = 'x' is not accepted; expected an integer"),
    ],
)
def test_bad_gradient_settings_are_one_line_errors(tmp_path, extra, needle):
    path = tmp_path / "bad.toml"
    gradient = "" if extra.startswith("gradient") else 'gradient = "spsa"\n'
    path.write_text(f'kind = "aer"\nshots = 64\n{gradient}{extra}')
    with pytest.raises(ValueError) as exc:
        backends.check_backend(str(path))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_spsa_keys_need_spsa_and_a_qiskit_kind(tmp_path):
    bad = tmp_path / "b.toml"
    bad.write_text('kind = "aer"\nspsa_perturbation = 0.1\n')
    with pytest.raises(ValueError, match="need gradient = 'spsa'"):
        backends.check_backend(str(bad))
    bad.write_text('kind = "statevector"\ngradient = "spsa"\n')
    with pytest.raises(ValueError, match="differentiates exactly"):
        backends.check_backend(str(bad))
    rows = {r["name"]: r for r in backends.table_rows()}
    assert rows["aer_shots_spsa"]["gradient"] == "spsa (c = 0.1)"
    assert rows["aer_shots"]["gradient"] == "param_shift"


def test_config_json_records_the_gradient_settings(tmp_path):
    """A prepared run's config.json holds the profile's gradient, perturbation and seed (and
    its Runtime table and shots after --shots)."""
    from qa3c_qiskit.config import TrainConfig
    from qa3c_qiskit.train import prepare_run

    path = spsa_profile(tmp_path, "spsa_perturbation = 0.05\nspsa_seed = 9\n")
    cfg = TrainConfig(
        backend=path, episodes=1, workers=1, shots=32, out=str(tmp_path / "runs"), quiet=True
    )
    run = prepare_run(cfg, show_table=False)
    try:
        config = json.loads((run.run_dir / "config.json").read_text())
    finally:
        run.events.close()
        run.lock.close()
    rec = config["backend_profile"]
    assert (rec["gradient"], rec["spsa_perturbation"], rec["spsa_seed"]) == ("spsa", 0.05, 9)
    assert rec["kind"] == "aer" and rec["shots"] == 32 and rec["runtime"] == {}
    assert rec["runs_on"] == "Aer"
