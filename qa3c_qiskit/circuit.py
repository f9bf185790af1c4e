"""The paper's variational quantum circuit (Fig. 3) as a parameterized Qiskit circuit.

Per qubit ``i``: ``H``, ``Ry(arctan x_i)``, ``Rz(arctan x_i^2)`` (the encoding ``U(x)``), then
``n_layers`` variational layers, each a block of CNOT entanglers followed by a general rotation
``Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)`` on every qubit (``V(theta)``).
The readout is ``<Z_i>`` on every qubit.

Run ``python -m qa3c_qiskit.circuit`` to draw it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from qiskit.circuit import ParameterVector, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

#: Named CNOT entangler patterns. Each maps n_qubits to a list of (control, target) pairs.
ENTANGLERS = {
    # Two CNOT rings, CNOT(i, i+1 mod n) then CNOT(i, i+2 mod n): every qubit controls two
    # CNOTs as in Fig. 3; the same author's QLSTM/QRNN circuits use this pattern.
    "double_ring": lambda n: (
        [(i, (i + 1) % n) for i in range(n)] + [(i, (i + 2) % n) for i in range(n)]
    ),
    # A single ring CNOT(i, i+1 mod n).
    "ring": lambda n: [(i, (i + 1) % n) for i in range(n)],
    # An open chain CNOT(i, i+1), i < n-1.
    "chain": lambda n: [(i, i + 1) for i in range(n - 1)],
}


@dataclass(frozen=True)
class VQC:
    """A built circuit with its parameter vectors and observables."""

    circuit: QuantumCircuit
    inputs: ParameterVector
    weights: ParameterVector
    observables: list[SparsePauliOp]

    @property
    def n_qubits(self) -> int:
        return self.circuit.num_qubits


def entangler_pairs(n_qubits: int, entangler: str) -> list[tuple[int, int]]:
    """The (control, target) CNOT pairs of one entangling block; self-loops and repeats dropped."""
    if entangler not in ENTANGLERS:
        raise ValueError(f"unknown entangler {entangler!r}; choose one of {', '.join(ENTANGLERS)}")
    pairs, seen = [], set()
    for c, t in ENTANGLERS[entangler](n_qubits):
        if c != t and (c, t) not in seen:
            pairs.append((c, t))
            seen.add((c, t))
    return pairs


def build_vqc(n_qubits: int = 8, n_layers: int = 2, entangler: str = "double_ring") -> VQC:
    """Build the paper's VQC: input vector ``x`` (n_qubits), weights ``w`` (n_layers*n_qubits*3).

    Weight ``w[(layer * n_qubits + qubit) * 3 + k]`` is ``(phi, theta, omega)[k]`` of that
    qubit's ``Rot`` in that layer.
    """
    if n_qubits < 1:
        raise ValueError(f"n_qubits must be >= 1, got {n_qubits}")
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    pairs = entangler_pairs(n_qubits, entangler)
    x = ParameterVector("x", n_qubits)
    w = ParameterVector("w", n_layers * n_qubits * 3)
    qc = QuantumCircuit(n_qubits, name="qa3c_vqc")
    for i in range(n_qubits):
        qc.h(i)
        qc.ry(x[i].arctan(), i)
        qc.rz((x[i] ** 2).arctan(), i)
    for layer in range(n_layers):
        qc.barrier()
        for c, t in pairs:
            qc.cx(c, t)
        for i in range(n_qubits):
            phi, theta, omega = (w[(layer * n_qubits + i) * 3 + k] for k in range(3))
            qc.rz(phi, i)
            qc.ry(theta, i)
            qc.rz(omega, i)
    return VQC(qc, x, w, z_observables(n_qubits))


def init_vqc_weights(n: int):
    """VQC weights 0.01 * N(0, 1) as a float64 torch tensor, as in the closest public QA3C code."""
    import torch

    return 0.01 * torch.randn(n, dtype=torch.float64)


def z_observables(n_qubits: int) -> list[SparsePauliOp]:
    """``Z_i`` on every qubit ``i`` (Qiskit's little-endian Pauli labels)."""
    return [
        SparsePauliOp("".join("Z" if q == i else "I" for q in reversed(range(n_qubits))))
        for i in range(n_qubits)
    ]


def observable_diagonals(observables, n_qubits: int, readout: dict | None = None):
    """The diagonals of I/Z observables as a real ``[n_obs, 2**n_qubits]`` float64 array
    (entry ``[j, k]``: observable j's eigenvalue on basis state k, qubit 0 = bit 0 of k).

    ``observables``: anything ``SparsePauliOp`` accepts (Pauli labels, Paulis, SparsePauliOps).
    ``readout`` (optional): per qubit a 2x2 confusion matrix ``m[true, measured]``; the diagonal
    is then the *expected measured* value of each basis state (``Z_q`` -> ``m[b, 0] - m[b, 1]``).
    Raises ValueError for an X/Y term or a complex coefficient.
    """
    import numpy as np

    k = np.arange(2**n_qubits)
    out = np.zeros((len(observables), 2**n_qubits))
    for j, obs in enumerate(observables):
        for label, coeff in SparsePauliOp(obs).to_list():
            if set(label) - {"I", "Z"}:
                raise ValueError(f"diagonal (I/Z) observables only, got {label!r}")
            if abs(complex(coeff).imag) > 1e-12:
                raise ValueError(f"observable coefficient must be real, got {coeff}")
            term = np.ones(2**n_qubits)
            for q, ch in enumerate(reversed(label)):
                if ch == "Z":
                    m = np.asarray((readout or {}).get(q, np.eye(2)), dtype=float)
                    term = term * np.array([m[0, 0] - m[0, 1], m[1, 0] - m[1, 1]])[(k >> q) & 1]
            out[j] += complex(coeff).real * term
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.circuit", description="Draw the QA3C variational circuit."
    )
    parser.add_argument("--qubits", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--entangler", default="double_ring", choices=list(ENTANGLERS))
    parser.add_argument("--output", default="text", choices=["text", "mpl"], help="drawer")
    parser.add_argument("--file", default=None, help="save the drawing here (mpl: a PNG)")
    args = parser.parse_args(argv)
    vqc = build_vqc(args.qubits, args.layers, args.entangler)
    drawing = vqc.circuit.draw(output=args.output, fold=-1)
    if args.output == "mpl":
        drawing.savefig(args.file or "vqc.png", bbox_inches="tight")
        print(f"wrote {args.file or 'vqc.png'}")
    else:
        print(drawing)
        if args.file:
            with open(args.file, "w") as fh:
                fh.write(str(drawing))


if __name__ == "__main__":
    main()
