"""Backend registry: a backend name -> a builder of the quantum torch layer (the VQC core).

``statevector`` (default) runs the circuit on the in-package exact torch engine
(:mod:`qa3c_qiskit.engine`), gradients by autograd.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from .circuit import build_vqc
from .engine import CircuitEngine


@lru_cache(maxsize=16)
def _engine(n_qubits: int, n_layers: int, entangler: str) -> CircuitEngine:
    vqc = build_vqc(n_qubits, n_layers, entangler)
    return CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables)


def init_vqc_weights(n: int) -> torch.Tensor:
    """VQC weights 0.01 * N(0, 1), as in the closest public QA3C code."""
    return 0.01 * torch.randn(n, dtype=torch.float64)


class StatevectorLayer(nn.Module):
    """The VQC on the exact torch engine: [B, n_qubits] inputs -> [B, n_qubits] <Z_i>."""

    def __init__(self, n_qubits: int = 8, n_layers: int = 2, entangler: str = "double_ring"):
        super().__init__()
        self.engine = _engine(n_qubits, n_layers, entangler)
        self.weight = nn.Parameter(init_vqc_weights(self.engine.num_weights))
        self.weight.is_quantum = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x, self.weight)


BACKENDS = {"statevector": "exact torch statevector engine (default), gradients by autograd"}


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")


def quantum_layer_factory(spec):
    """A zero-argument callable building one VQC layer for ``spec`` (a ModelSpec)."""
    check_backend(spec.backend)
    return lambda: StatevectorLayer(spec.n_qubits, spec.n_layers, spec.entangler)
