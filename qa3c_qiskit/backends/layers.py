"""The VQC as a torch layer, one per backend kind, and the factory the models use.

Every quantum core has the same contract:

* ``forward(x [B, n_qubits]) -> [B, n_qubits]`` (``<Z_i>``) with the layer's own ``weight``
  parameter ``[n_weights]`` (the only entry of its state dict, so a model trained on one backend
  loads on any other);
* ``functional(x [B, n_qubits], w [B, n_weights]) -> [B, n_qubits]``: one weight vector per
  sample (many actor-learners in one batched call), differentiable w.r.t. ``x`` and ``w`` with
  *per-sample* weight gradients ``[B, n_weights]`` (never summed over the batch);
  ``functional(x, w, n_grad=k)`` differentiates only the first ``k`` rows (the others are
  forward-only, outputs detached; on Qiskit backends 1 circuit each instead of ``1 + 2G``).

:class:`StatevectorLayer` runs the in-package exact engine (autograd / adjoint gradients);
:class:`QiskitLayer` runs ``TorchConnector(EstimatorQNN)`` on the backend's estimator, building
its Qiskit objects lazily in the process that uses it (nothing Qiskit is pickled).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from ..circuit import build_vqc, init_vqc_weights
from ..engine import CircuitEngine
from .registry import resolve


@lru_cache(maxsize=16)
def _engine(n_qubits: int, n_layers: int, entangler: str) -> CircuitEngine:
    vqc = build_vqc(n_qubits, n_layers, entangler)
    return CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables)


class StatevectorLayer(nn.Module):
    """The VQC on the exact torch engine: [B, n_qubits] inputs -> [B, n_qubits] <Z_i>."""

    supports_n_grad = True  # functional(x, w, n_grad=k): rows from k on forward-only

    def __init__(self, n_qubits: int = 8, n_layers: int = 2, entangler: str = "double_ring"):
        super().__init__()
        self._vqc_args = (n_qubits, n_layers, entangler)
        self.engine = _engine(n_qubits, n_layers, entangler)
        self.weight = nn.Parameter(init_vqc_weights(self.engine.num_weights))
        self.weight.is_quantum = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x, self.weight)

    def functional(self, x: torch.Tensor, w: torch.Tensor, n_grad: int | None = None):
        """[B, n_qubits] inputs, per-sample weights ``w`` [B, n_weights] -> [B, n_qubits];
        differentiable w.r.t. ``x`` and ``w`` (``w``'s gradient per sample); rows from
        ``n_grad`` on (None: none) are forward-only (detached outputs)."""
        return _detach_tail(self.engine(x, w), n_grad)


class QiskitLayer(nn.Module):
    """The VQC through ``TorchConnector(EstimatorQNN)``: [B, n_qubits] -> [B, n_qubits] <Z_i>.

    ``make_execution(vqc) -> Execution`` is called on the first forward pass (in the process
    that runs the layer).
    """

    supports_n_grad = True  # functional(x, w, n_grad=k): rows from k on forward-only

    def __init__(
        self,
        make_execution: Callable,
        n_qubits: int = 8,
        n_layers: int = 2,
        entangler: str = "double_ring",
    ):
        super().__init__()
        self._vqc_args = (n_qubits, n_layers, entangler)
        self._make_execution = make_execution
        n_weights = n_layers * n_qubits * 3
        self.weight = nn.Parameter(init_vqc_weights(n_weights))
        self.weight.is_quantum = True
        self._built = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_built"] = None  # Qiskit objects never leave their process
        return state

    @property
    def built(self):
        """The layer's :class:`~qa3c_qiskit.backends.gradient.BuiltQNN` (built on first use)."""
        if self._built is None:
            from .gradient import build_qnn

            vqc = build_vqc(*self._vqc_args)
            self._built = build_qnn(vqc, self._make_execution(vqc), self.weight)
        return self._built

    @property
    def counter(self):
        """The counting wrapper around this layer's estimator (calls, pubs, circuits)."""
        return self.built.counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_qubits] -> [B, n_qubits] with the layer's own ``weight`` (TorchConnector)."""
        built = self.built
        built.qnn.fuse = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        # TorchConnector returns float32; the rest of the model is float64
        return built.connector(x).to(x.dtype)

    def functional(
        self, x: torch.Tensor, w: torch.Tensor, n_grad: int | None = None
    ) -> torch.Tensor:
        """[B, n_qubits] inputs, per-sample weights ``w`` [B, n_weights] -> [B, n_qubits].

        Differentiable w.r.t. ``x`` and ``w``; ``w``'s gradient is per sample ([B, n_weights]).
        One primitive call (one PUB) for the forward pass, values and gradients together when
        autograd records; the backward pass makes no further call. ``n_grad`` (None: B): only
        the first ``n_grad`` rows are differentiated; the others are forward-only (1 circuit
        each, outputs detached) in the same PUB -- e.g. the critic's bootstrap states.
        """
        from .gradient import PerSampleQNNFunction

        if x.dim() == 1:
            x = x[None]
        if w.dim() == 1:
            w = w.expand(x.shape[0], -1)
        n_in, n_w = self._vqc_args[0], self.weight.numel()
        if w.shape != (x.shape[0], n_w) or x.shape[1] != n_in:
            raise ValueError(
                f"expected inputs [B, {n_in}] and weights [B, {n_w}], "
                f"got {tuple(x.shape)} and {tuple(w.shape)}"
            )
        need_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
        if n_grad is not None and not 0 <= n_grad <= x.shape[0]:
            raise ValueError(f"n_grad must be in [0, {x.shape[0]}], got {n_grad}")
        out = PerSampleQNNFunction.apply(x, w, self.built.qnn, need_grad, n_grad)
        return _detach_tail(out, n_grad) if need_grad else out

    def close(self) -> None:
        """Release the backend (closes an IBM Runtime session); safe to call twice."""
        if self._built is not None:
            built, self._built = self._built, None
            if built.execution is not None:
                built.execution.close()


def _detach_tail(out: torch.Tensor, n_grad: int | None) -> torch.Tensor:
    """``out`` with rows from ``n_grad`` on detached (None: unchanged)."""
    if n_grad is None or n_grad >= out.shape[0]:
        return out
    return torch.cat([out[:n_grad], out[n_grad:].detach()])


def quantum_layer_factory(spec):
    """A zero-argument callable building one VQC layer for ``spec`` (a ModelSpec).

    The profile is loaded and checked now (errors surface before any worker starts); the Qiskit
    simulator or session is built lazily by the layer in the process that runs it.
    """
    profile = resolve(spec.backend, getattr(spec, "shots", None), spec.n_qubits)
    if profile.kind == "statevector":
        return lambda: StatevectorLayer(spec.n_qubits, spec.n_layers, spec.entangler)
    from .execution import ExecutionBuilder

    def make():
        return QiskitLayer(ExecutionBuilder(profile), spec.n_qubits, spec.n_layers, spec.entangler)

    return make
