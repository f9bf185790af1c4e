"""The backend registry and the TorchConnector(EstimatorQNN) layer on real Aer / IBM Runtime."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qa3c_qiskit import backends
from qa3c_qiskit.a3c import A3CSettings, Segment, a3c_loss, local_gradient, torch_segment_gradients
from qa3c_qiskit.backends import StatevectorLayer, check_backend, quantum_layer_factory
from qa3c_qiskit.models import ActorCritic, ModelSpec


def layer(backend: str, shots: int | None = None, **kw):
    return quantum_layer_factory(ModelSpec(4, 2, backend=backend, shots=shots, **kw))()


def twin(lay) -> StatevectorLayer:
    sv = StatevectorLayer(*lay._vqc_args)
    sv.weight.data.copy_(lay.weight.data)
    return sv


def write_profile(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_aer_statevector_matches_statevector_values_and_gradients():
    torch.manual_seed(1)
    lay = layer("aer_statevector")
    lay.weight.data.copy_(torch.randn(48, dtype=torch.float64))
    sv = twin(lay)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    x_sv = x.detach().clone().requires_grad_(True)
    g = torch.randn(5, 8, dtype=torch.float64)
    y = lay(x)
    (y * g).sum().backward()
    y_sv = sv(x_sv)
    (y_sv * g).sum().backward()
    assert torch.allclose(y, y_sv, atol=1e-6, rtol=0)
    assert torch.allclose(x.grad, x_sv.grad, atol=1e-5, rtol=0)
    assert torch.allclose(lay.weight.grad, sv.weight.grad, atol=1e-5, rtol=0)
    # forward + parameter-shift gradient of all samples and observables: one call, one PUB
    assert lay.counter.calls == 1 and lay.counter.pubs == 1
    assert lay.counter.circuits == 5 * (1 + 2 * 64)  # 16 encoding + 48 weight gates
    lay.counter.reset()
    with torch.no_grad():
        lay(x[:1])
    assert (lay.counter.calls, lay.counter.pubs, lay.counter.circuits) == (1, 1, 1)


def test_gradient_class_through_qiskit_api_matches_autograd():
    """BatchedParamShiftGradient.run (qiskit-ml's gradient API) == torch autograd on the engine."""
    lay = layer("aer_statevector")
    qnn = lay.built.qnn
    x = np.random.default_rng(0).normal(size=(3, 8))
    w = lay.weight.detach().numpy()
    input_grad, weight_grad = qnn.backward(x, w)  # no cached forward: goes through gradient.run
    sv = twin(lay)
    ref_in, ref_w = np.zeros((3, 8, 8)), np.zeros((3, 8, 48))
    for b in range(3):
        for o in range(8):
            xt = torch.tensor(x[b : b + 1], requires_grad=True)
            sv.weight.grad = None
            sv(xt)[0, o].backward()
            ref_in[b, o], ref_w[b, o] = xt.grad[0].numpy(), sv.weight.grad.numpy()
    assert np.allclose(input_grad, ref_in, atol=1e-5)
    assert np.allclose(weight_grad, ref_w, atol=1e-5)
    # the same through BaseEstimatorGradient.run with per-circuit observables
    values = np.concatenate([x, np.broadcast_to(w, (3, 48))], axis=1)
    obs = list(qnn._observables)
    res = qnn.gradient.run([qnn._circuit] * 2, [obs[0], obs[3]], values[:2]).result()
    assert np.allclose(res.gradients[1][8:], ref_w[1, 3], atol=1e-5)


def test_aer_shots_within_five_standard_errors_and_really_sampled():
    torch.manual_seed(2)
    lay = layer("aer_shots", shots=4096)
    lay.weight.data.copy_(torch.randn(48, dtype=torch.float64))
    x = torch.randn(6, 8, dtype=torch.float64)
    with torch.no_grad():
        y, exact = lay(x), twin(lay)(x)
    se = torch.sqrt((1 - exact**2).clamp_min(1e-12) / 4096)
    assert bool(((y - exact).abs() <= 5 * se + 1e-9).all()), (y - exact).abs().max()
    assert not torch.allclose(y, exact, atol=1e-4)  # shot noise is there
    # with one shot every <Z_i> is an eigenvalue, +-1: outcomes are sampled, not noised values
    one = layer("aer_shots", shots=1)
    with torch.no_grad():
        z = one(x)
    assert set(z.flatten().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("backend, steps", [("aer_shots", 5), ("density_noisy", 1)])
def test_update_is_two_primitive_calls_and_action_one(backend, steps):
    """An A3C update (critic on B+1 states, actor on B, backward) = 2 calls; an action = 1
    (density_noisy: the density engine's fast shift path, counted as if its circuits had run)."""
    torch.manual_seed(3)
    model = ActorCritic(ModelSpec(4, 2, backend=backend))
    obs = torch.randn(steps + 1, 4, dtype=torch.float64)
    model.act(obs[0])
    actor, critic = model.actor.core.counter, model.critic.core.counter
    assert (actor.calls, critic.calls) == (1, 0)
    actor.reset()
    acts, rewards = torch.arange(steps) % 2, [1.0] * steps
    loss = a3c_loss(model, obs[:steps], acts, rewards, obs[steps], False, A3CSettings())
    grad = local_gradient(model, loss)
    assert actor.calls + critic.calls == 2 and actor.pubs + critic.pubs == 2
    assert actor.circuits + critic.circuits == (2 * steps + 1) * (1 + 2 * 64)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.close()


def test_density_noisy_expectations_are_damped_by_noise():
    torch.manual_seed(4)
    lay = layer("density_noisy", shots=100_000)
    x = torch.full((1, 8), 50.0, dtype=torch.float64)  # Ry(~pi/2) H|0> = |1>: a basis state
    with torch.no_grad():
        y, exact = lay(x), twin(lay)(x)
    # |<Z_i>| shrinks under depolarizing/readout noise but the sign pattern survives
    big = exact.abs() > 0.3
    assert bool(big.any())
    assert bool((y[big].abs() < exact[big].abs()).all())
    assert bool((torch.sign(y[big]) == torch.sign(exact[big])).all())


def test_density_engine_matches_aer_density_matrix_values_gradients_and_readout():
    """The torch noisy density-matrix engine (density_noisy) == Aer's density matrix on the same
    device noise model, and its 2-sweep parameter shift == running every shifted circuit."""
    from qiskit import transpile
    from qiskit_aer import AerSimulator
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2

    from qa3c_qiskit.backends.density import NoisyDensityEstimator
    from qa3c_qiskit.backends.estimators import apply_readout
    from qa3c_qiskit.backends.gradient import BatchedParamShiftGradient
    from qa3c_qiskit.circuit import build_vqc

    vqc = build_vqc(4, 1, "ring")
    device = backends.fake_backend("FakeGuadalupeV2")
    circuit = transpile(vqc.circuit, basis_gates=backends.device_basis(device), seed_transpiler=0)
    noise, _, readout = backends.logical_noise_model(device, 4, circuit=circuit)
    errors = backends.logical_gate_errors(device, 4, circuit)
    assert len([k for k in errors if k[0] == "cx"]) == 4  # compact: only the ring's CX pairs
    sim = AerSimulator(method="density_matrix", noise_model=noise)
    values = np.random.default_rng(0).normal(size=(3, len(circuit.parameters)))
    ours = BatchedParamShiftGradient(NoisyDensityEstimator(errors, None, shots=None))
    aer = BatchedParamShiftGradient(AerEstimatorV2.from_backend(sim))
    v1, g1 = ours.evaluate(circuit, vqc.observables, values)
    v2, g2 = aer.evaluate(circuit, vqc.observables, values)
    assert np.allclose(v1, v2, atol=1e-8) and np.allclose(g1, g2, atol=1e-8)
    assert np.abs(g1).max() > 1e-3
    # readout: exact outcome distribution x confusion matrices, as Aer's probabilities
    est = NoisyDensityEstimator(errors, readout, shots=None)
    evs = est.run([(circuit, [[o] for o in vqc.observables], values)]).result()[0].data.evs
    prep = circuit.copy()
    prep.save_probabilities(label="p")
    binds = [{p: values[:, i] for i, p in enumerate(circuit.parameters)}]
    res = sim.run([prep], shots=1, parameter_binds=binds).result()
    probs = apply_readout(np.stack([res.data(i)["p"] for i in range(3)]), 4, readout)
    z = 1 - 2 * ((np.arange(16)[None, :] >> np.arange(4)[:, None]) & 1)
    assert np.allclose(evs, z @ probs.T, atol=1e-8)
    assert np.abs(evs - v1).max() > 1e-3  # readout errors are really applied


def test_unknown_backend_is_a_one_line_error_listing_known_ones():
    with pytest.raises(ValueError) as exc:
        check_backend("aer_bogus")
    msg = str(exc.value)
    assert "\n" not in msg and "'aer_bogus'" in msg
    for name in ("statevector", "aer_statevector", "aer_shots", "density_noisy", "aer_device"):
        assert name in msg


@pytest.mark.parametrize(
    "text, needle",
    [
        ('kind = "aer"\nshots = 0\n', "shots must be a positive integer"),
        ('kind = "aer"\nshots = 64\nnoise_source = "FakeNowhereV2"\n', "FakeNowhereV2"),
        ('kind = "aer"\ncolour = "blue"\n', "unknown field(s) colour"),
        ('kind = "warp_drive"\n', "unknown kind"),
        (
            'kind = "ibm_runtime"\nshots = 64\n[runtime]\nbackend = "ibm_brisbane"\n',
            "no saved IBM Quantum credentials",
        ),
    ],
)
def test_bad_profiles_fail_before_any_worker_starts(tmp_path, monkeypatch, text, needle):
    monkeypatch.setenv("HOME", str(tmp_path))  # no saved IBM account
    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    path = write_profile(tmp_path, "bad", text)
    with pytest.raises(ValueError) as exc:
        check_backend(str(path))
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    from qa3c_qiskit.config import TrainConfig
    from qa3c_qiskit.train import train

    cfg = TrainConfig(backend=str(path), episodes=2, workers=1, out=str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="bad"):
        train(cfg, show_table=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_user_profile_by_name_and_by_path(tmp_path, monkeypatch):
    write_profile(tmp_path, "my_shots", 'kind = "aer"\nshots = 256\ndescription = "mine"\n')
    monkeypatch.setenv(backends.BACKENDS_ENV, str(tmp_path))
    assert "my_shots" in backends.known_backends()
    assert backends.resolve("my_shots").shots == 256
    assert backends.resolve(str(tmp_path / "my_shots.toml")).shots == 256
    assert backends.resolve("my_shots", shots=8).shots == 8
    rows = {r["name"]: r for r in backends.table_rows()}
    assert rows["my_shots"]["shots"] == "256" and rows["aer_statevector"]["shots"] == "exact"


def test_backends_cli_prints_table(capsys):
    assert backends.main([]) == 0
    out = capsys.readouterr().out
    for name in ("statevector", "aer_shots", "density_noisy", "aer_device", "ibm_runtime"):
        assert name in out
    # what executes each backend, in the listing
    for engine in ("exact engine", "Aer", "in-package", "density-matrix", "Runtime local", "QPU"):
        assert engine in out


def test_every_aer_name_runs_aer_and_the_listing_says_what_executes():
    rows = {r["name"]: r for r in backends.table_rows()}
    for name, row in rows.items():
        if name.startswith("aer_") and name != "aer_noisy":
            assert row["runs on"] == "Aer", row
    assert rows["statevector"]["runs on"] == "exact engine (in-package)"
    assert rows["density_noisy"]["runs on"] == "in-package density-matrix engine"
    assert rows["ibm_runtime_local"]["runs on"] == "Runtime local mode"
    assert rows["ibm_runtime"]["runs on"] == "real QPU"
    # the old name: listed as what it is, a deprecated name of density_noisy
    assert rows["aer_noisy"]["runs on"] == "in-package density-matrix engine"
    assert rows["aer_noisy"]["status"] == "deprecated name of density_noisy"


def test_aer_noisy_is_a_deprecated_alias_of_density_noisy(capsys, monkeypatch):
    from qa3c_qiskit.backends import registry

    monkeypatch.setattr(registry, "_NOTICED", set())
    p = backends.resolve("aer_noisy")
    assert (p.name, p.kind) == ("density_noisy", "torch_density")
    backends.resolve("aer_noisy")  # the notice is printed once per process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'aer_noisy' is deprecated" in err[0] and "'density_noisy'" in err[0]
    assert "aer_noisy" not in backends.known_backends()  # no profile of its own


def test_ibm_runtime_two_workers_own_sessions_closed(tmp_path, monkeypatch):
    """Local testing mode: 2 workers on 2 backends, each its own Session (opened in the worker),
    all closed when training ends (workers sharing a backend: tests/test_ibm.py)."""
    from qa3c_qiskit.config import TrainConfig
    from qa3c_qiskit.train import train

    log = tmp_path / "sessions.jsonl"
    monkeypatch.setenv(backends.SESSION_LOG_ENV, str(log))  # inherited by spawned workers
    path = write_profile(
        tmp_path,
        "rt_fake",
        'kind = "ibm_runtime"\nshots = 64\noptimization_level = 1\nseed = 3\n'
        '[runtime]\nfake_backends = ["FakeManilaV2", "FakeLimaV2"]\n',
    )
    cfg = TrainConfig(
        backend=str(path),
        env="CartPole-v1",
        episodes=2,
        workers=2,
        n_qubits=2,
        n_layers=1,
        out=str(tmp_path / "runs"),
        quiet=True,
    )
    run_dir = train(cfg, show_table=False)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    opened = [r for r in rows if r["event"] == "open"]
    closed = [r for r in rows if r["event"] == "close"]
    assert len(opened) == 2 and len({r["pid"] for r in opened}) == 2  # one session per worker
    assert len({r["object"] for r in opened}) == 2
    assert {r["object"] for r in closed} == {r["object"] for r in opened}
    assert all(not r["active"] for r in closed) and all(r["active"] for r in opened)
    assert sorted(r["backend"] for r in opened) == ["fake_lima", "fake_manila"]
    assert not any(r.get("shared") for r in rows)  # no supervisor session
    assert (run_dir / "model.pt").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["episodes"] == 2 and math.isfinite(summary["final_avg100"])


def per_sample_reference(lay, x, w, g):
    """Values and x/w gradients of ``sum(y * g)``, one sample at a time through the exact
    statevector engine's shared-weight path (an independent per-sample reference)."""
    sv = twin(lay)
    ys, gxs, gws = [], [], []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].detach().clone().requires_grad_(True)
        sv.weight.data.copy_(w[b].detach())
        sv.weight.grad = None
        y = sv(xb)
        (y * g[b : b + 1]).sum().backward()
        ys.append(y.detach())
        gxs.append(xb.grad)
        gws.append(sv.weight.grad.clone()[None])
    return torch.cat(ys), torch.cat(gxs), torch.cat(gws)


@pytest.mark.parametrize("backend", ["statevector", "aer_statevector"])
def test_functional_per_sample_weights_match_statevector_engine(backend):
    """``functional(x, w[B, n_w])``: values and per-sample gradients == the exact engine's, and
    each sample's weight gradient is that sample's own (a one-sample call gives the same)."""
    torch.manual_seed(6)
    lay = layer(backend)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 48, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 8, dtype=torch.float64)
    y = lay.functional(x, w)
    (y * g).sum().backward()
    ref_y, ref_x, ref_w = per_sample_reference(lay, x, w, g)
    assert y.shape == (5, 8) and w.grad.shape == (5, 48)
    assert torch.allclose(y, ref_y, atol=1e-6, rtol=0)
    assert torch.allclose(x.grad, ref_x, atol=1e-6, rtol=0)
    assert torch.allclose(w.grad, ref_w, atol=1e-6, rtol=0)
    # per sample: sample 3 alone has the same weight gradient (nothing summed over samples)
    w3 = w[3:4].detach().clone().requires_grad_(True)
    (lay.functional(x[3:4].detach(), w3) * g[3:4]).sum().backward()
    assert torch.allclose(w3.grad[0], w.grad[3], atol=1e-6, rtol=0)
    # shared weights broadcast: functional(x, weight) == forward(x)
    with torch.no_grad():
        assert torch.allclose(lay.functional(x, lay.weight), lay(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["aer_statevector", "density_exact"])
def test_functional_n_grad_rows_are_forward_only_in_the_same_call(backend, tmp_path):
    """``functional(x, w, n_grad=3)`` on 5 rows: one call, one PUB of 3 * (1 + 2G) + 2 circuits
    (the density engine: its shift path counted the same way); values == the all-rows call, the
    first 3 rows' gradients == the all-rows call's, the last 2 rows detached."""
    torch.manual_seed(8)
    if backend == "density_exact":  # density_noisy without shots: exact noisy values
        text = 'kind = "torch_density"\nnoise_source = "FakeGuadalupeV2"\n'
        backend = str(write_profile(tmp_path, backend, text))
    per_sample = 1 + 2 * 64
    lay = layer(backend)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(5, 48, dtype=torch.float64)).requires_grad_(True)
    g = torch.randn(5, 8, dtype=torch.float64)
    counter = lay.counter
    counter.reset()
    y = lay.functional(x, w, n_grad=3)
    assert (counter.calls, counter.pubs, counter.circuits) == (1, 1, 3 * per_sample + 2)
    (y * g).sum().backward()
    assert counter.calls == 1  # the backward pass makes no call
    x_all = x.detach().clone().requires_grad_(True)
    w_all = w.detach().clone().requires_grad_(True)
    y_all = lay.functional(x_all, w_all)
    (y_all[:3] * g[:3]).sum().backward()
    assert torch.allclose(y, y_all, atol=1e-6, rtol=0)
    assert torch.allclose(x.grad, x_all.grad, atol=1e-6, rtol=0)
    assert torch.allclose(w.grad, w_all.grad, atol=1e-6, rtol=0)
    assert bool((w.grad[:3].abs().sum(1) > 0).all()) and not w.grad[3:].any()
    lay.close()


def _two_segments(d: int) -> list[Segment]:
    gen = torch.Generator().manual_seed(4)
    obs = [torch.randn(d, dtype=torch.float64, generator=gen) for _ in range(7)]
    return [
        Segment(obs[:3], [0, 1, 1], [1.0, 0.5, 1.0], obs[3], False),
        Segment(obs[4:6], [1, 0], [1.0, 1.0], obs[6], False),
    ]


def test_segment_gradients_do_not_differentiate_the_bootstrap_states():
    """An update of 2 segments (3 + 2 steps) on aer_statevector: 1 call, 1 PUB of
    2 * 5 * (1 + 2G) + 2 circuits (the 2 bootstrap states forward-only; 12 * 129 before), and
    the gradients and losses equal the exact statevector engine's."""
    torch.manual_seed(9)
    model = ActorCritic(ModelSpec(4, 2, backend="aer_statevector"))
    exact = ActorCritic(ModelSpec(4, 2, backend="statevector"))
    exact.flat.copy_(model.flat)
    thetas = model.flat.detach().repeat(2, 1) + 0.2 * torch.randn(2, model.flat.numel())
    segs = _two_segments(4)
    counter = model.actor.core.counter
    counter.reset()
    grads, losses = torch_segment_gradients(model, thetas, segs, A3CSettings())
    assert (counter.calls, counter.pubs, counter.circuits) == (1, 1, 2 * 5 * 129 + 2)
    assert model.critic.core._built is None  # one layer serves actor and critic samples
    ref, ref_losses = torch_segment_gradients(exact, thetas, segs, A3CSettings())
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(grads, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(losses, ref_losses, rtol=0, atol=1e-6)
    model.close()


@pytest.mark.parametrize("backend", ["aer_statevector", "aer_shots"])
def test_functional_is_one_call_forward_and_at_most_two_with_backward(backend):
    torch.manual_seed(7)
    lay = layer(backend)
    x = torch.randn(5, 8, dtype=torch.float64)
    w = 0.1 * torch.randn(5, 48, dtype=torch.float64)
    counter = lay.counter  # builds the Qiskit objects
    counter.reset()
    with torch.no_grad():
        y = lay.functional(x, w)
    assert y.shape == (5, 8)
    assert (counter.calls, counter.pubs, counter.circuits) == (1, 1, 5)
    counter.reset()
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    lay.functional(xg, wg).sum().backward()
    assert counter.calls <= 2 and counter.pubs <= 2
    assert wg.grad.shape == (5, 48) and torch.isfinite(wg.grad).all()
    assert bool((wg.grad.abs().sum(1) > 0).all()) and torch.isfinite(xg.grad).all()


def test_ibm_runtime_local_functional_one_call_without_deprecation_warnings():
    """Runtime path (local testing mode): per-sample forward = one call, and the runtime's
    estimator is the current (client-side) one, not the deprecated EstimatorV2."""
    import warnings

    lay = layer("ibm_runtime_local", shots=64, n_qubits=2, n_layers=1)
    x = torch.randn(3, 2, dtype=torch.float64)
    w = 0.1 * torch.randn(3, 6, dtype=torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            counter = lay.counter
            with torch.no_grad():
                y = lay.functional(x, w)
        assert y.shape == (3, 2) and bool((y.abs() <= 1).all())
        assert (counter.calls, counter.pubs, counter.circuits) == (1, 1, 3)
    finally:
        lay.close()


def test_builtin_profiles_found_from_any_directory_and_user_folder_wins(tmp_path, monkeypatch):
    """Built-ins are package data (found outside a checkout); ./backends/ is the user folder."""
    monkeypatch.delenv(backends.BACKENDS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    known = backends.known_backends()
    for name in ("statevector", "aer_statevector", "aer_shots", "density_noisy", "aer_device"):
        assert known[name].parent == backends.BUILTIN_DIR
    (tmp_path / "backends").mkdir()
    write_profile(tmp_path / "backends", "aer_shots", 'kind = "aer"\nshots = 32\n')
    assert backends.resolve("aer_shots").shots == 32
    assert backends.load_profile("density_noisy").kind == "torch_density"
    assert backends.load_profile("aer_noisy").kind == "torch_density"  # deprecated alias
    write_profile(tmp_path / "backends", "aer_noisy", 'kind = "aer"\nshots = 16\n')
    assert backends.load_profile("aer_noisy").kind == "aer"  # a user's own aer_noisy wins
