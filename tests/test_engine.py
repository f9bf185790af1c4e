"""The exact ``statevector`` engine against Qiskit: values vs ``Statevector`` (1e-6), gradients vs
qiskit-machine-learning's parameter-shift gradients (1e-5), the compiled executor (``numba``) vs
the autograd reference executor (1e-10), shared and per-sample weights, the gate table vs Qiskit's
matrices, the angle compiler's values and derivatives, mode selection, unsupported instructions,
a second backward, and the layer used by the models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qiskit.circuit import ParameterVector, QuantumCircuit
from qiskit.circuit.library import RGate
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import Operator, SparsePauliOp, Statevector
from qiskit_machine_learning.gradients import ParamShiftEstimatorGradient

from qa3c_qiskit.backends import StatevectorLayer
from qa3c_qiskit.circuit import ENTANGLERS, build_vqc
from qa3c_qiskit.engine import GATES, CircuitEngine, compile_angles, engine_mode

#: the compiled executors under test (the reference executor is what they are held to)
FAST_MODES = ["numba"]


def qiskit_values(circuit, params, values, observables) -> np.ndarray:
    """<O_j> for one binding, by qiskit.quantum_info.Statevector: [n_obs]."""
    bound = circuit.assign_parameters(dict(zip(params, values)), strict=False)
    sv = Statevector(bound)
    return np.array([sv.expectation_value(o).real for o in observables])


def param_shift_grad(circuit, params, values, observable) -> np.ndarray:
    """d<observable>/d(params) by qiskit-machine-learning's parameter-shift rule: [n_params].

    ``values`` maps each of ``params`` to its value; parameters absent from the circuit get 0.
    """
    binding = dict(zip(params, values))
    used = [p for p in params if p in circuit.parameters]
    grad = ParamShiftEstimatorGradient(StatevectorEstimator())
    # the gradient classes take values in circuit.parameters order, return them in `used` order
    ordered = [binding[p] for p in circuit.parameters]
    job = grad.run([circuit], [observable], [ordered], [used])
    by_param = dict(zip(used, np.asarray(job.result().gradients[0])))
    return np.array([by_param.get(p, 0.0) for p in params])


def combine(observables, coeffs) -> SparsePauliOp:
    """sum_j coeffs[j] * observables[j] as one SparsePauliOp."""
    total = coeffs[0] * observables[0]
    for c, o in zip(coeffs[1:], observables[1:]):
        total = total + c * o
    return total.simplify()


# ---------------------------------------------------------------------------------------------
# The paper's circuit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("entangler", list(ENTANGLERS))
def test_paper_circuit_values_match_statevector(entangler, mode):
    vqc = build_vqc(8, 2, entangler)
    engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables, mode=mode)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64) * 2
    w = torch.randn(48, generator=gen, dtype=torch.float64) * 2
    fast = engine(x, w)
    ref = engine.reference(x, w)
    assert fast.shape == (4, 8) and fast.dtype == torch.float64
    params = list(vqc.inputs) + list(vqc.weights)
    for b in range(4):
        expected = qiskit_values(vqc.circuit, params, list(x[b]) + list(w), vqc.observables)
        np.testing.assert_allclose(fast[b].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(ref[b].numpy(), expected, atol=1e-6)
    # one observation at a time (the acting path) agrees with the batch
    for b in range(4):
        with torch.no_grad():
            np.testing.assert_allclose(engine(x[b], w)[0].numpy(), fast[b].numpy(), atol=1e-12)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_paper_circuit_gradients_match_parameter_shift(mode):
    vqc = build_vqc(8, 2, "double_ring")
    engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables, mode=mode)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 8, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    w = (torch.randn(48, generator=gen, dtype=torch.float64)).requires_grad_()
    coeffs = torch.randn(8, generator=gen, dtype=torch.float64)
    out = engine(x, w)
    gx, gw = torch.autograd.grad((out * coeffs).sum(), (x, w))
    obs = combine(vqc.observables, coeffs.tolist())
    params = list(vqc.inputs) + list(vqc.weights)
    gw_expected = np.zeros(48)
    for b in range(2):
        values = x[b].tolist() + w.tolist()
        shift = param_shift_grad(vqc.circuit, params, values, obs)
        np.testing.assert_allclose(gx[b].numpy(), shift[:8], atol=1e-5)
        gw_expected += shift[8:]
    np.testing.assert_allclose(gw.numpy(), gw_expected, atol=1e-5)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_fast_and_reference_gradients_agree_on_paper_circuit(mode):
    vqc = build_vqc(8, 2, "double_ring")
    engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables, mode=mode)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 8, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(48, generator=gen, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    grads = [
        torch.autograd.grad((f(x, w) * upstream).sum(), (x, w)) for f in (engine, engine.reference)
    ]
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=0)
    # only one of the two requiring a gradient
    (gx,) = torch.autograd.grad((engine(x, w.detach()) * upstream).sum(), (x,))
    torch.testing.assert_close(gx, grads[1][0], atol=1e-10, rtol=0)
    (gw,) = torch.autograd.grad((engine(x.detach(), w) * upstream).sum(), (w,))
    torch.testing.assert_close(gw, grads[1][1], atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------------
# Random circuits over the supported gate set
# ---------------------------------------------------------------------------------------------
FIXED_1Q = ["h", "x", "y", "z", "s", "sdg", "t", "tdg", "sx", "sxdg"]
FIXED_MULTI = ["cx", "cz", "cy", "swap", "ch", "iswap", "ecr", "ccx", "cswap"]


def random_circuit(seed: int, n: int = 4, depth: int = 40):
    """A random circuit over every supported gate kind, angles random parameter expressions."""
    rng = np.random.default_rng(seed)
    x = ParameterVector("x", 3)
    w = ParameterVector("w", 5)

    def angle():
        a, b = x[rng.integers(3)], w[rng.integers(5)]
        choices = [
            lambda: a,
            lambda: b,
            lambda: a.arctan(),
            lambda: (a**2).arctan(),
            lambda: 2 * b + 0.3,
            lambda: a * b,
            lambda: a.sin() * b,
            lambda: float(rng.normal()),  # a parameterized gate with a constant angle
        ]
        return choices[rng.integers(len(choices))]()

    qc = QuantumCircuit(n)
    # every qubit touched early so the first local layer is a real product state
    for q in range(n):
        qc.h(q)
    for _ in range(depth):
        kind = rng.choice(["fixed1", "param1", "fixedm", "param2"], p=[0.2, 0.4, 0.2, 0.2])
        qs = [int(q) for q in rng.permutation(n)]
        if kind == "fixed1":
            getattr(qc, str(rng.choice(FIXED_1Q)))(qs[0])
        elif kind == "param1":
            name = str(rng.choice(["rx", "ry", "rz", "p", "u"]))
            if name == "u":
                qc.u(angle(), angle(), angle(), qs[0])
            else:
                getattr(qc, name)(angle(), qs[0])
        elif kind == "fixedm":
            name = str(rng.choice(FIXED_MULTI))
            k = 3 if name in ("ccx", "cswap") else 2
            getattr(qc, name)(*qs[:k])
        else:
            name = str(rng.choice(["rzz", "rxx", "ryy", "rzx", "crx", "cry", "crz", "cp"]))
            getattr(qc, name)(angle(), qs[0], qs[1])
        if rng.random() < 0.1:
            qc.barrier()
    observables = [
        SparsePauliOp("IIIZ"),
        SparsePauliOp("ZIIZ"),
        SparsePauliOp.from_list([("IZZI", 0.5), ("ZIII", -1.5), ("IIII", 0.25)]),
    ]
    return qc, x, w, observables


def test_random_circuits_cover_the_gate_set():
    names = set()
    for seed in range(6):
        qc, *_ = random_circuit(seed)
        names |= set(qc.count_ops())
    assert set(GATES) - {"u1"} <= names  # u1 is p under another name
    assert set(FIXED_1Q) | set(FIXED_MULTI) <= names


def test_gate_table_matches_qiskit():
    """Every entry of the one gate table: its torch matrix == Qiskit's, its Pauli generator and
    shift rule consistent."""
    from qiskit.circuit.library import get_standard_gate_name_mapping

    lib = get_standard_gate_name_mapping()
    rng = np.random.default_rng(5)
    for name, gate in GATES.items():
        angles = rng.normal(size=gate.n_angles)
        op = lib[name].base_class(*angles)
        assert op.num_qubits == gate.n_qubits
        ours = gate.matrix(*[torch.tensor(a) for a in angles]).numpy()
        np.testing.assert_allclose(ours, Operator(op).data, atol=1e-12, err_msg=name)
        if gate.pauli is not None:
            assert gate.shift_rule and len(gate.pauli) == gate.n_qubits


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("seed", range(6))
def test_random_circuit_values_match_statevector(seed, mode):
    qc, x, w, observables = random_circuit(seed)
    engine = CircuitEngine(qc, x, w, observables, mode=mode)
    rng = np.random.default_rng(100 + seed)
    xs = torch.tensor(rng.normal(size=(3, 3)))
    ws = torch.tensor(rng.normal(size=5))
    fast, ref = engine(xs, ws), engine.reference(xs, ws)
    params = list(x) + list(w)
    for b in range(3):
        expected = qiskit_values(qc, params, list(xs[b]) + list(ws), observables)
        np.testing.assert_allclose(fast[b].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(ref[b].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("seed", range(3))
def test_random_circuit_gradients_match_parameter_shift(seed, mode):
    qc, x, w, observables = random_circuit(seed, depth=25)
    engine = CircuitEngine(qc, x, w, observables, mode=mode)
    rng = np.random.default_rng(200 + seed)
    xs = torch.tensor(rng.normal(size=(2, 3)), requires_grad=True)
    ws = torch.tensor(rng.normal(size=5), requires_grad=True)
    coeffs = torch.tensor(rng.normal(size=len(observables)))
    gx, gw = torch.autograd.grad((engine(xs, ws) * coeffs).sum(), (xs, ws))
    obs = combine(observables, coeffs.tolist())
    params = list(x) + list(w)
    gw_expected = np.zeros(5)
    for b in range(2):
        expected = param_shift_grad(qc, params, xs[b].tolist() + ws.tolist(), obs)
        np.testing.assert_allclose(gx[b].numpy(), expected[:3], atol=1e-5)
        gw_expected += expected[3:]
    np.testing.assert_allclose(gw.numpy(), gw_expected, atol=1e-5)


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("seed", range(10, 20))
def test_random_circuit_fast_path_matches_reference(seed, mode):
    qc, x, w, observables = random_circuit(seed, n=int(3 + seed % 3), depth=30)
    observables = [SparsePauliOp("I" * (qc.num_qubits - 1) + "Z")]
    engine = CircuitEngine(qc, x, w, observables, mode=mode)
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    ws = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_()
    fast, ref = engine(xs, ws), engine.reference(xs, ws)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=0)
    g_fast = torch.autograd.grad(fast.sum(), (xs, ws))
    g_ref = torch.autograd.grad(ref.sum(), (xs, ws))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_input_only_and_weight_only_circuits(mode):
    x, w = ParameterVector("x", 2), ParameterVector("w", 2)
    qc = QuantumCircuit(2)
    qc.ry(w[0], 0)  # weights before inputs: the cached layer is the product layer
    qc.rx(w[1], 1)
    qc.cx(0, 1)
    qc.rz(x[0] * x[1], 1)
    qc.h(0)
    engine = CircuitEngine(qc, x, w, [SparsePauliOp("ZZ"), SparsePauliOp("ZI")], mode=mode)
    xs = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fast, ref = engine(xs, ws), engine.reference(xs, ws)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
    for a, b in zip(
        torch.autograd.grad(fast.sum(), (xs, ws)), torch.autograd.grad(ref.sum(), (xs, ws))
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # a circuit with no parameters at all still returns one row per input
    qc0 = QuantumCircuit(2)
    qc0.x(1)
    e0 = CircuitEngine(qc0, [], [], [SparsePauliOp("ZI"), SparsePauliOp("IZ")], mode=mode)
    out = e0(torch.zeros(5, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0]] * 5, dtype=torch.float64))


@pytest.mark.parametrize("mode", FAST_MODES)
def test_repeated_weight_layers_and_constant_layers(mode):
    """Weight-only layers of equal structure (evaluated together), reused weights, a layer of
    constant gates only, odd qubit count."""
    x, w = ParameterVector("x", 3), ParameterVector("w", 4)
    qc = QuantumCircuit(3)
    for q in range(3):
        qc.ry(x[q], q)
    for layer in range(3):
        qc.cx(0, 1)
        qc.cz(1, 2)
        for q in range(3):
            qc.rz(w[(layer + q) % 4], q)  # weights shared across layers and qubits
            qc.rx(2 * w[(layer * 3 + q) % 4] - 0.5, q)
        qc.swap(0, 2)
        for q in range(3):
            qc.h(q)  # a local layer of constant gates only
        qc.ccx(0, 1, 2)
    engine = CircuitEngine(qc, x, w, [SparsePauliOp("IIZ"), SparsePauliOp("ZZI")], mode=mode)
    gen = torch.Generator().manual_seed(7)
    xs = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    fast, ref = engine(xs, ws), engine.reference(xs, ws)
    params = list(x) + list(w)
    obs = [SparsePauliOp("IIZ"), SparsePauliOp("ZZI")]
    expected = qiskit_values(qc, params, xs[1].tolist() + ws.tolist(), obs)
    np.testing.assert_allclose(fast[1].detach().numpy(), expected, atol=1e-6)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
    g_fast = torch.autograd.grad(fast.sum(), (xs, ws))
    g_ref = torch.autograd.grad(ref.sum(), (xs, ws))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_dense_gates_and_circuits_not_starting_with_a_local_layer(mode):
    """A 3-qubit dense unitary, two-qubit rotations first on |0...0> and on distant qubits, a
    phased permutation first: the stage program beyond the paper's local/permutation shape."""
    from qiskit.circuit.library import UnitaryGate
    from qiskit.quantum_info import random_unitary

    x, w = ParameterVector("x", 2), ParameterVector("w", 3)
    qc = QuantumCircuit(4)
    qc.rxx(x[0] * w[0], 0, 3)  # the first op: a parameterized dense gate on |0000>
    qc.append(UnitaryGate(random_unitary(8, seed=5)), [2, 0, 3])
    qc.ry(w[1], 1)
    qc.cry(x[1].arctan() + w[2], 3, 1)
    qc.iswap(1, 2)
    qc.u(w[0], x[0], w[2] * x[1], 2)
    observables = [SparsePauliOp("IIZZ"), SparsePauliOp("ZIII")]
    gen = torch.Generator().manual_seed(11)
    xs = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    for circuit in (qc, _prefixed(qc)):
        engine = CircuitEngine(circuit, x, w, observables, mode=mode)
        fast, ref = engine(xs, ws), engine.reference(xs, ws)
        expected = qiskit_values(
            circuit, list(x) + list(w), xs[2].tolist() + ws.tolist(), observables
        )
        np.testing.assert_allclose(fast[2].detach().numpy(), expected, atol=1e-6)
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=0)
        for a, b in zip(
            torch.autograd.grad(fast.sum(), (xs, ws)), torch.autograd.grad(ref.sum(), (xs, ws))
        ):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def _prefixed(qc: QuantumCircuit) -> QuantumCircuit:
    """``qc`` after a phased permutation on |0...0> (the first op is a monomial stage)."""
    out = QuantumCircuit(qc.num_qubits)
    out.x(0)
    out.cz(0, 1)
    out.cx(0, 2)
    return out.compose(qc)


def test_angle_program_values_and_derivatives():
    """compile_angles(...).evaluate: every angle and d angle / d parameter (the parameter-shift
    gradient's chain rule) against sympy's own evaluation and central differences."""
    qc, x, w, _ = random_circuit(3, depth=40)
    params = list(x) + list(w)
    exprs = [p for inst in qc.data for p in inst.operation.params]
    prog = compile_angles(exprs, params)
    rng = np.random.default_rng(9)
    theta = rng.normal(size=(4, len(params)))
    ang, jac = prog.evaluate(theta)
    assert ang.shape == (4, len(exprs)) and jac.shape == (4, len(exprs), len(params))
    for n in range(4):
        bind = dict(zip(params, theta[n]))
        for s, e in enumerate(exprs):
            if hasattr(e, "bind"):
                e = e.bind({p: v for p, v in bind.items() if p in e.parameters})
            assert abs(ang[n, s] - float(e)) < 1e-12
    eps = 1e-6
    for p in range(len(params)):
        up, down = theta.copy(), theta.copy()
        up[:, p] += eps
        down[:, p] -= eps
        fd = (prog.evaluate(up)[0] - prog.evaluate(down)[0]) / (2 * eps)
        np.testing.assert_allclose(jac[:, :, p], fd, atol=1e-6)
    with pytest.raises(ValueError, match="unsupported function 'conjugate'"):
        compile_angles([x[0].conjugate() + x[1]], params)


def test_second_backward_raises_a_clear_error():
    vqc = build_vqc(3, 1)
    engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, dtype=torch.float64, requires_grad=True)
    loss = engine(x, w).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="tape was freed.*call the engine's forward again"):
        loss.backward()


def test_engine_mode_selection(monkeypatch):
    """QA3C_ENGINE picks the executor; bad names are rejected naming the accepted ones; every
    mode computes the same values."""
    vqc = build_vqc(3, 1)
    x = torch.randn(2, 3, dtype=torch.float64)
    w = torch.randn(vqc.circuit.num_parameters - 3, dtype=torch.float64)
    outs = []
    for mode in FAST_MODES + ["reference"]:
        monkeypatch.setenv("QA3C_ENGINE", mode)
        engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights)
        assert engine.mode == mode
        outs.append(engine(x, w))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-12, rtol=0)
    monkeypatch.setenv("QA3C_ENGINE", "gpu")
    with pytest.raises(ValueError, match="'gpu'.*supported: numba, reference"):
        CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights)
    monkeypatch.delenv("QA3C_ENGINE")
    assert engine_mode() == "numba"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def _one_param_circuit():
    x = ParameterVector("x", 1)
    return QuantumCircuit(2), x


def test_unsupported_parameterized_gate_is_named():
    qc, x = _one_param_circuit()
    qc.append(RGate(x[0], 0.3), [0])
    with pytest.raises(ValueError, match="'r'.*supported: .*rx"):
        CircuitEngine(qc, x, [])


@pytest.mark.parametrize("name", ["measure", "reset"])
def test_measure_and_reset_are_rejected_by_name(name):
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    if name == "measure":
        qc.measure(0, 0)
    else:
        qc.reset(0)
    with pytest.raises(ValueError, match=f"'{name}'"):
        CircuitEngine(qc, [], [])


def test_non_diagonal_observable_and_bad_shapes_are_rejected():
    vqc = build_vqc(2, 1)
    with pytest.raises(ValueError, match="'XI'"):
        CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, [SparsePauliOp("XI")])
    engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights)
    with pytest.raises(ValueError, match=r"expected inputs \[B, 2\] and weights \[6\]"):
        engine(torch.zeros(3, 5, dtype=torch.float64), torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="not given as inputs or weights"):
        CircuitEngine(vqc.circuit, vqc.inputs, [])


# ---------------------------------------------------------------------------------------------
# The layer used by the models: weight cache and flat-buffer pulls
# ---------------------------------------------------------------------------------------------
def test_layer_follows_in_place_weight_changes():
    """Weights change in place at every pull: the cached weight-only matrices must follow."""
    torch.manual_seed(0)
    actor, critic = StatevectorLayer(8, 2, "double_ring"), StatevectorLayer(8, 2, "double_ring")
    assert actor.engine is critic.engine  # shared engine, distinct weights
    assert actor.weight.is_quantum and actor.weight.shape == (48,)
    x = torch.randn(1, 8, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            for layer in (actor, critic, actor):
                out = layer(x)
                torch.testing.assert_close(out, layer.engine.reference(x, layer.weight))
            actor.weight.data.add_(0.3)  # in place, like a pull into the flat buffer
            critic.weight.data.copy_(torch.randn(48, dtype=torch.float64))
    x5 = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    out = actor(x5)
    out.sum().backward()
    assert actor.weight.grad is not None and x5.grad is not None
    assert out.shape == (5, 8)


# ---------------------------------------------------------------------------------------------
# Per-sample weights (many actor-learners per process: one weight vector per row)
# ---------------------------------------------------------------------------------------------
def _per_sample_case(circuit, x, w, observables, mode, batch, seed):
    """Forward with w [B, n_w] == Statevector per row (1e-6); adjoint weight gradient [B, n_w]
    == per-row autograd of the reference executor (1e-10); input gradient likewise."""
    engine = CircuitEngine(circuit, x, w, observables, mode=mode)
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, len(x), generator=gen, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(batch, len(w), generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(batch, len(observables), generator=gen, dtype=torch.float64)
    out = engine(xs, ws)
    assert out.shape == (batch, len(observables))
    params = list(x) + list(w)
    for b in range(batch):
        expected = qiskit_values(circuit, params, xs[b].tolist() + ws[b].tolist(), observables)
        np.testing.assert_allclose(out[b].detach().numpy(), expected, atol=1e-6)
    gx, gw = torch.autograd.grad((out * upstream).sum(), (xs, ws))
    assert gw.shape == (batch, len(w))
    for b in range(batch):
        xb = xs[b : b + 1].detach().requires_grad_()
        wb = ws[b].detach().requires_grad_()
        ref = engine.reference(xb, wb)
        rgx, rgw = torch.autograd.grad((ref * upstream[b]).sum(), (xb, wb))
        torch.testing.assert_close(gw[b], rgw, atol=1e-10, rtol=0)
        torch.testing.assert_close(gx[b], rgx[0], atol=1e-10, rtol=0)
    # the reference executor itself takes per-sample weights and agrees
    torch.testing.assert_close(engine.reference(xs, ws), out, atol=1e-10, rtol=0)
    # per-sample weights all equal == shared weights (summed gradient)
    w0 = ws[0].detach().requires_grad_()
    w_rep = w0.detach().expand(batch, -1).clone().requires_grad_()
    out_shared, out_rep = engine(xs, w0), engine(xs, w_rep)
    torch.testing.assert_close(out_shared, out_rep, atol=1e-12, rtol=0)
    (g_shared,) = torch.autograd.grad((out_shared * upstream).sum(), (w0,))
    (g_rep,) = torch.autograd.grad((out_rep * upstream).sum(), (w_rep,))
    torch.testing.assert_close(g_rep.sum(0), g_shared, atol=1e-10, rtol=0)
    with torch.no_grad():  # the no-grad forward path
        torch.testing.assert_close(engine(xs, ws), out.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", FAST_MODES + ["reference"])
def test_per_sample_weights_paper_circuit(mode):
    vqc = build_vqc(8, 2, "double_ring")
    for batch in (5, 70):  # per-lane loops; vectorised lanes in two chunks of 35
        _per_sample_case(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables, mode, batch, 31)


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("readout", ["pauli_sums", "z_only"])
@pytest.mark.parametrize("seed", range(4))
def test_per_sample_weights_random_circuits(seed, readout, mode):
    """Pauli sums with ZZ terms run the plain readout; Z_q-only observables (the paper's) fold
    the final local layer into the readout: both, with batches beyond one vector chunk."""
    qc, x, w, observables = random_circuit(seed, depth=30)
    if readout == "z_only":
        observables = [
            SparsePauliOp("IIIZ"),
            SparsePauliOp.from_list([("ZIII", 0.7), ("IZII", -1)]),
        ]
    _per_sample_case(qc, x, w, observables, mode, 3 if seed % 2 else 21, 40 + seed)


def test_per_sample_weights_bad_batch_is_rejected():
    vqc = build_vqc(2, 1)
    engine = CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights)
    with pytest.raises(ValueError, match=r"\[6\] or \[B, 6\]"):
        engine(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(2, 6, dtype=torch.float64))


def test_kernel_cache_is_dropped_when_any_engine_source_changes(tmp_path):
    """numba's cache of a kernel includes its callees from other files, so an edit anywhere in
    the engine must drop every cached kernel (a stale callee crashed the engine once)."""
    from qa3c_qiskit.engine import _drop_stale_kernel_cache

    (tmp_path / "kernels.py").write_text("a = 1\n")
    (tmp_path / "sweeps.py").write_text("b = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "sweeps.forward-1.py311.nbi").write_text("old")
    _drop_stale_kernel_cache(tmp_path)  # no stamp yet: unknown sources, drop
    assert not list(cache.glob("*.nbi"))
    (cache / "sweeps.forward-1.py311.nbi").write_text("fresh")
    (cache / "sweeps.forward-1.py311.1.nbc").write_text("fresh")
    _drop_stale_kernel_cache(tmp_path)  # unchanged sources: kept
    assert len(list(cache.iterdir())) == 3
    (tmp_path / "kernels.py").write_text("a = 2\n")  # the callee's file only
    _drop_stale_kernel_cache(tmp_path)
    assert [p.name for p in cache.iterdir()] == ["engine-sources.sha256"]
