"""The paper's VQC (Fig. 3) as a parameterized Qiskit circuit."""

from __future__ import annotations

import numpy as np
import pytest
from qiskit.quantum_info import SparsePauliOp, Statevector

from qa3c_qiskit.circuit import ENTANGLERS, build_vqc, entangler_pairs, main, z_observables


def _ops(circuit):
    """[(name, qubit indices, params)] of the circuit, barriers dropped."""
    return [
        (
            inst.operation.name,
            [circuit.find_bit(q).index for q in inst.qubits],
            inst.operation.params,
        )
        for inst in circuit.data
        if inst.operation.name != "barrier"
    ]


def test_default_circuit_gate_counts_and_parameters():
    vqc = build_vqc()
    assert vqc.n_qubits == 8
    assert len(vqc.inputs) == 8 and len(vqc.weights) == 48  # 8 qubits x 3 angles x 2 layers
    assert set(vqc.circuit.parameters) == set(vqc.inputs) | set(vqc.weights)
    counts = dict(vqc.circuit.count_ops())
    counts.pop("barrier", None)
    # encoding: H, Ry, Rz per qubit; 2 layers of 16 CNOTs (two rings) and 8 Rot = RZ RY RZ
    assert counts == {"h": 8, "ry": 8 + 2 * 8, "rz": 8 + 2 * 16, "cx": 2 * 16}
    assert len(vqc.observables) == 8


def test_encoding_is_h_then_ry_arctan_x_then_rz_arctan_x_squared():
    vqc = build_vqc(4, 1)
    ops = _ops(vqc.circuit)[:12]
    for i in range(4):
        (h, qh, _), (ry, qy, (ay,)), (rz, qz, (az,)) = ops[3 * i : 3 * i + 3]
        assert (h, ry, rz) == ("h", "ry", "rz") and qh == qy == qz == [i]
        for value in (-1.7, 0.3, 2.5):
            bind = {vqc.inputs[i]: value}
            assert float(ay.bind(bind)) == pytest.approx(np.arctan(value))
            assert float(az.bind(bind)) == pytest.approx(np.arctan(value**2))


@pytest.mark.parametrize(
    ("entangler", "pairs"),
    [
        (
            "double_ring",
            [(i, (i + 1) % 8) for i in range(8)] + [(i, (i + 2) % 8) for i in range(8)],
        ),
        ("ring", [(i, (i + 1) % 8) for i in range(8)]),
        ("chain", [(i, i + 1) for i in range(7)]),
    ],
)
def test_layers_are_cnot_entangler_then_rot_rz_ry_rz(entangler, pairs):
    vqc = build_vqc(8, 2, entangler)
    ops = _ops(vqc.circuit)[24:]
    per_layer = len(pairs) + 24
    assert len(ops) == 2 * per_layer
    for layer in range(2):
        block = ops[layer * per_layer : (layer + 1) * per_layer]
        assert [(name, tuple(q)) for name, q, _ in block[: len(pairs)]] == [
            ("cx", p) for p in pairs
        ]
        rots = block[len(pairs) :]
        for i in range(8):
            names = [name for name, _, _ in rots[3 * i : 3 * i + 3]]
            assert names == [
                "rz",
                "ry",
                "rz",
            ]  # Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)
            for k in range(3):
                name, q, (angle,) = rots[3 * i + k]
                assert q == [i]
                assert angle == vqc.weights[(layer * 8 + i) * 3 + k]


def test_every_qubit_controls_two_cnots_in_the_default_entangler():
    pairs = entangler_pairs(8, "double_ring")
    assert sorted(c for c, _ in pairs) == sorted(list(range(8)) * 2)
    # small registers: self-loops and repeated pairs are dropped
    assert entangler_pairs(2, "double_ring") == [(0, 1), (1, 0)]
    assert entangler_pairs(1, "ring") == []


def test_unknown_entangler_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="unknown entangler 'star'.*double_ring, ring, chain"):
        build_vqc(8, 2, "star")
    with pytest.raises(ValueError, match="n_qubits must be >= 1, got 0"):
        build_vqc(0)
    with pytest.raises(ValueError, match="n_layers must be >= 0, got -1"):
        build_vqc(8, -1)
    assert set(ENTANGLERS) == {"double_ring", "ring", "chain"}


def test_z_observables_read_qubit_i():
    obs = z_observables(3)
    assert [o.paulis[0].to_label() for o in obs] == ["IIZ", "IZI", "ZII"]
    sv = Statevector.from_label("001")  # qubit 0 in |1>
    assert [sv.expectation_value(o).real for o in obs] == pytest.approx([-1, 1, 1])
    assert all(isinstance(o, SparsePauliOp) for o in obs)


def test_drawing_shows_the_gates(capsys):
    text = str(build_vqc(8, 2).circuit.draw(output="text", fold=-1))
    for token in ("H", "Ry(atan(x[0]))", "Rz(atan(x[0]**2))", "Rz(w[0])", "Ry(w[1])", "■"):
        assert token in text
    main(["--qubits", "3", "--layers", "1", "--entangler", "ring"])
    out = capsys.readouterr().out
    assert "Ry(atan(x[2]))" in out and "Rz(w[8])" in out
