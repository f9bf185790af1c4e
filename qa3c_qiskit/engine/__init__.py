"""Exact statevector engine: a parameterized Qiskit ``QuantumCircuit`` simulated exactly, batched
and differentiable in torch.

Stages (each a module):

* :mod:`.compile`: circuit -> :class:`~.compile.Program` (the gate table :data:`GATES`, the
  stages, the angle-expression compiler :func:`compile_angles`, the readout diagonals);
* :mod:`.reference`: the program as plain torch ops, differentiated by autograd
  (``QA3C_ENGINE=reference``; the tests hold the compiled executor to it);
* :mod:`.numba_exec`: the compiled executor (the default): the program flattened for the numba
  kernels (:mod:`.sweeps` forward and adjoint backward, one call each for the whole batch;
  :mod:`.kernels`, :mod:`.angles`, :mod:`.fold`, :mod:`.product` their building blocks), the
  batch in the vectorised inner loops. There is no numpy executor any more: numba is a required
  dependency and the reference executor covers the "plain and obviously right" role.

Where to add a gate: :data:`.compile.GATES` (and, for a new kind of matrix, its code in
:mod:`.kernels` ``_base_matrix``/``_dense_lane`` and the gradient in ``_grad1``).

Amplitudes are double precision, so results agree with ``qiskit.quantum_info.Statevector`` to
~1e-12. Qubit 0 is the least significant bit of a basis index (Qiskit's convention).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from ..threads import limit_blas_threads  # re-exported for a3c.py / benchmarks (moved)
from .compile import (
    GATES,
    SHIFTABLE_GATES,
    AngleProgram,
    CircuitCache,
    Program,
    compile_angles,
    compile_circuit,
)


def _drop_stale_kernel_cache(here: Path = Path(__file__).parent) -> None:
    """Delete numba's on-disk cache of the engine when any engine source changed.

    numba keys a cached function on its own file only, but a kernel's compiled code includes
    the kernels it calls from other modules (``sweeps`` -> ``kernels``): after an edit of
    ``kernels.py`` alone, the cached ``sweeps`` would still run the old callee (wrong results,
    or a crash when a callee's array shapes changed). So the cache is tied to one hash of every
    engine source. Runs at import, before any kernel is loaded; a read-only install is left
    alone (numba then caches elsewhere or not at all)."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py"))))
    stamp = here / "__pycache__" / "engine-sources.sha256"
    try:
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return
        for cached in [*stamp.parent.glob("*.nbi"), *stamp.parent.glob("*.nbc")]:
            cached.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:
        pass


# numba loads a kernel's cache at its first call, so this runs in time after the imports
_drop_stale_kernel_cache()

__all__ = [
    "ENGINE_MODES",
    "GATES",
    "SHIFTABLE_GATES",
    "AngleProgram",
    "CircuitCache",
    "CircuitEngine",
    "Program",
    "compile_angles",
    "compile_circuit",
    "engine_mode",
    "limit_blas_threads",
]

ENGINE_MODES = ("numba", "reference")


def engine_mode(mode: str | None = None) -> str:
    """The executor to use: ``mode`` if given, else the environment variable ``QA3C_ENGINE``,
    else ``numba``."""
    mode = mode or os.environ.get("QA3C_ENGINE") or "numba"
    if mode not in ENGINE_MODES:
        raise ValueError(
            f"unknown statevector engine mode {mode!r} (QA3C_ENGINE); "
            f"supported: {', '.join(ENGINE_MODES)}"
        )
    return mode


class CircuitEngine:
    """Exact, batched, differentiable simulation of a parameterized ``QuantumCircuit``.

    ``engine(x, w)`` takes inputs ``x`` ``[B, n_in]`` (or one row ``[n_in]``) and weights ``w``
    ``[n_w]`` (shared by every row) or ``[B, n_w]`` (one weight vector per row), and returns the
    expectation values of ``observables`` (I/Z Pauli sums, ``Z_i`` on every qubit by default) as
    a ``[B, n_obs]`` float64 tensor, differentiable with respect to both; the weight gradient
    has the shape of ``w`` (summed over the batch when shared, per row otherwise).

    ``mode`` picks the executor (see :func:`engine_mode`): ``numba`` (compiled kernels, the
    default) or ``reference`` (torch autograd); both compute the same values and gradients.
    """

    def __init__(
        self,
        circuit: QuantumCircuit,
        input_params: Sequence[Parameter],
        weight_params: Sequence[Parameter],
        observables: Sequence[SparsePauliOp] | None = None,
        mode: str | None = None,
    ):
        self.mode = engine_mode(mode)
        self.input_params = list(input_params)
        self.weight_params = list(weight_params)
        self.program = compile_circuit(circuit, self.input_params, self.weight_params, observables)
        self.n, self.dim = self.program.n, self.program.dim
        self.num_inputs, self.num_weights = len(self.input_params), len(self.weight_params)
        self._reference = None
        self.executor = self._reference_executor() if self.mode == "reference" else None
        if self.executor is None:
            from .numba_exec import NumbaExecutor

            self.executor = NumbaExecutor(self.program)

    def _reference_executor(self):
        if self._reference is None:
            from .reference import ReferenceExecutor

            self._reference = ReferenceExecutor(self.program)
        return self._reference

    def _check(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x[None]
        ok = x.dim() == 2 and x.shape[-1] == self.num_inputs
        ok = ok and w.shape in ((self.num_weights,), (x.shape[0], self.num_weights))
        if not ok:
            raise ValueError(
                f"expected inputs [B, {self.num_inputs}] and weights [{self.num_weights}] "
                f"or [B, {self.num_weights}], got {tuple(x.shape)} and {tuple(w.shape)}"
            )
        return x

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """<observables> [B, n_obs] for inputs ``x`` [B, n_in] and weights [n_w] or [B, n_w]."""
        return self.executor(self._check(x, w), w)

    def reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The same as ``engine(x, w)``, run by the reference executor (torch autograd)."""
        return self._reference_executor()(self._check(x, w), w)
