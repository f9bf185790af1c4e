"""Backend registry: a backend name (or a profile TOML path) -> a checked :class:`Profile`.

Profiles are TOML files. ``--backend NAME`` finds ``NAME.toml`` in, first to last: the folders
listed in ``$QA3C_BACKENDS_DIR``, the ``backends/`` folder of the working directory (the user
folder; the top-level ``backends/`` of a checkout) and the built-in profiles shipped inside the
package (``qa3c_qiskit/backends/profiles/``); ``--backend path/to/profile.toml`` loads that file.
A user adds a backend by adding a file. Fields (all optional except ``kind``):

* ``kind``: ``statevector`` (the in-package exact torch engine, autograd), ``aer`` (Aer on the
  logical qubits; exact when ``shots`` is absent, sampled otherwise; with ``noise_source`` the
  circuit is decomposed into the device's basis gates and gets that device's noise),
  ``torch_density`` (the in-package noisy density-matrix engine of
  :mod:`qa3c_qiskit.backends.density`: the same logical-qubit device noise as ``aer`` with
  ``noise_source``, exact or sampled, fast parameter shift; no Aer simulation),
  ``aer_device`` (the fake device's noise model *and* coupling map: transpiled and routed,
  observables follow the layout), ``ibm_runtime`` (one IBM Runtime ``Session`` per backend);
* ``description``, ``shots`` (int > 0), ``seed`` (simulator/transpiler seed, int),
  ``noise_source`` (a ``qiskit_ibm_runtime.fake_provider`` backend, e.g. ``FakeGuadalupeV2``),
  ``method`` (Aer simulation method, Aer kinds only), ``optimization_level`` (0-3);
* ``gradient`` (every kind but ``statevector``, which differentiates exactly): ``param_shift``
  (default; ``1 + 2G`` circuits per sample, exact in expectation) or ``spsa`` (simultaneous
  perturbation of all ``G`` gate angles: 3 circuits per sample, the value and ``theta +- c
  Delta``); with ``spsa``: ``spsa_perturbation`` (``c`` in radians, float > 0, default
  :data:`DEFAULT_SPSA_PERTURBATION`) and ``spsa_seed`` (int, default 0) seeding the draws of
  ``Delta`` (see :class:`~qa3c_qiskit.backends.gradient.SPSAGradient`);
* ``[runtime]`` (``ibm_runtime`` only): ``channel``, ``instance``, ``backend`` (an IBM backend
  name) or ``backends`` (a list: worker process ``r`` uses ``backends[r % len]``, one QPU per
  worker), ``fake_backend`` / ``fake_backends`` (fake backends: local testing mode, no network
  or account needed), and the Runtime options (see :data:`RUNTIME_OPTIONS`): ``mode``
  (``session`` | ``batch`` | ``job``), ``session_max_time`` (s), ``max_execution_time`` (s),
  ``resilience_level`` (0-2), ``dynamical_decoupling`` (bool), ``dd_sequence``
  (``XX`` | ``XpXm`` | ``XY4``), ``twirling_gates``, ``twirling_measure`` (bool), ``precision``
  (instead of ``shots``: the estimator's target standard error).

Run ``python -m qa3c_qiskit.backends`` for the table of known backends (:mod:`.cli`).
"""

from __future__ import annotations

import math
import os
import sys
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .noise import fake_backend

# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
KINDS = ("statevector", "aer", "torch_density", "aer_device", "ibm_runtime")
#: the gradient estimators of the Qiskit kinds (profile key ``gradient``)
GRADIENTS = ("param_shift", "spsa")
#: SPSA's default perturbation c (radians). The bias is O(c^2), on the paper's circuit mostly a
#: uniform shrinkage (mean estimate 0.92x the exact gradient at c = 0.1, 0.73x at 0.2, cosine to
#: it 0.998: tests/test_spsa.py), a scale Adam largely ignores. The shot noise per angle,
#: ~sigma / (sqrt(2) c) = 0.22 at 1024 shots, stays below SPSA's own random-direction noise
#: (~|grad|, 0.6-1 here); c = 0.05 would double it to gain ~6% of scale
DEFAULT_SPSA_PERTURBATION = 0.1
#: deprecated profile names -> the profile they load (a one-line notice is printed once)
ALIASES = {"aer_noisy": "density_noisy"}
AER_METHODS = ("automatic", "statevector", "density_matrix", "matrix_product_state")
#: where a Runtime profile runs
RUNTIME_TARGET_KEYS = (
    "channel",
    "instance",
    "backend",
    "backends",
    "fake_backend",
    "fake_backends",
)
#: Runtime options of a profile's ``[runtime]`` table: key -> accepted values (a tuple) or a
#: type check (a callable returning True for a good value) and its description
RUNTIME_MODES = ("session", "batch", "job")
DD_SEQUENCES = ("XX", "XpXm", "XY4")
RUNTIME_OPTIONS: dict[str, tuple] = {
    "mode": (RUNTIME_MODES, None),
    "resilience_level": ((0, 1, 2), None),
    "dd_sequence": (DD_SEQUENCES, None),
    "dynamical_decoupling": (None, (lambda v: isinstance(v, bool), "true or false")),
    "twirling_gates": (None, (lambda v: isinstance(v, bool), "true or false")),
    "twirling_measure": (None, (lambda v: isinstance(v, bool), "true or false")),
    "max_execution_time": (
        None,
        (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "seconds, int > 0"),
    ),
    "session_max_time": (
        None,
        (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "seconds, int > 0"),
    ),
    "precision": (
        None,
        (
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
            "a float in (0, 1)",
        ),
    ),
}
RUNTIME_KEYS = RUNTIME_TARGET_KEYS + tuple(RUNTIME_OPTIONS)
BACKENDS_ENV = "QA3C_BACKENDS_DIR"
#: the built-in profiles, shipped as package data
BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"
#: the user folder, relative to the working directory
USER_DIR = "backends"
SESSION_LOG_ENV = "QA3C_SESSION_LOG"


@dataclass(frozen=True)
class Profile:
    """One backend profile (a TOML file in ``backends/``)."""

    name: str
    kind: str
    description: str = ""
    shots: int | None = None
    seed: int | None = None
    noise_source: str | None = None
    method: str = "automatic"
    optimization_level: int = 1
    gradient: str = "param_shift"
    spsa_perturbation: float | None = None
    spsa_seed: int | None = None
    runtime: dict = field(default_factory=dict)
    path: str | None = None

    def needs(self) -> str:
        """A short human description of what the backend needs to run."""
        fake = " + qiskit-ibm-runtime (fake backend)" if self.noise_source else ""
        if self.kind == "statevector":
            return "nothing (torch)"
        if self.kind == "torch_density":
            # qiskit-aer only builds the device's error channels; it simulates nothing
            return "nothing (torch)" + (" + qiskit-aer (noise channels)" + fake if fake else "")
        if self.kind in ("aer", "aer_device"):
            return "qiskit-aer" + fake
        if is_local(self):
            return "qiskit-ibm-runtime (local testing mode)"
        return "qiskit-ibm-runtime + saved IBM Quantum account (network)"

    def engine(self) -> str:
        """What executes the circuits, in a few words (the backend list's ``runs on`` column)."""
        if self.kind == "statevector":
            return "exact engine (in-package)"
        if self.kind == "torch_density":
            return "in-package density-matrix engine"
        if self.kind in ("aer", "aer_device"):
            return "Aer"
        if self.kind == "ibm_runtime":
            return "Runtime local mode" if is_local(self) else "real QPU"
        return "?"

    def record(self) -> dict:
        """What a run records about its backend (``config.json``'s ``backend_profile``): name,
        kind, what executes, profile file, shots, seed, noise source, optimization level, the
        gradient settings (:meth:`gradient_options`) and the ``[runtime]`` table."""
        return {
            "name": self.name,
            "kind": self.kind,
            "runs_on": self.engine(),
            "path": self.path,
            "shots": self.shots,
            "seed": self.seed,
            "noise_source": self.noise_source,
            "optimization_level": self.optimization_level,
            **self.gradient_options(),
            "runtime": dict(self.runtime),
        }

    def gradient_options(self) -> dict:
        """``{"gradient", "spsa_perturbation", "spsa_seed"}`` with defaults filled in (the SPSA
        keys only for ``gradient = "spsa"``)."""
        if self.gradient != "spsa":
            return {"gradient": self.gradient}
        return {
            "gradient": "spsa",
            "spsa_perturbation": float(
                DEFAULT_SPSA_PERTURBATION
                if self.spsa_perturbation is None
                else self.spsa_perturbation
            ),
            "spsa_seed": 0 if self.spsa_seed is None else self.spsa_seed,
        }


def backend_dirs() -> list[Path]:
    """Folders searched for ``NAME.toml``, first wins: ``$QA3C_BACKENDS_DIR`` entries, the
    working directory's ``backends/``, the built-in profiles."""
    dirs = [Path(p) for p in os.environ.get(BACKENDS_ENV, "").split(os.pathsep) if p]
    return [*dirs, Path(USER_DIR), BUILTIN_DIR]


def known_backends() -> dict[str, Path]:
    """{name: profile path} of every profile found (earlier folders win)."""
    found: dict[str, Path] = {}
    for d in backend_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    found.setdefault("statevector", Path("<built-in>"))
    return found


def _is_path(name: str) -> bool:
    return name.endswith(".toml") or os.sep in name or "/" in name


def load_profile(name: str) -> Profile:
    """The profile called ``name`` or stored at path ``name``; ValueError if unknown or malformed."""
    if _is_path(name):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"backend profile file {name!r} not found")
    else:
        known = known_backends()
        if name not in known and ALIASES.get(name) in known:
            _alias_notice(name)
            return load_profile(ALIASES[name])
        if name not in known:
            raise ValueError(
                f"unknown backend {name!r}; known backends: {', '.join(sorted(known))}"
            )
        path = known[name]
        if str(path) == "<built-in>":
            return Profile(name="statevector", kind="statevector", description=_SV_DESCRIPTION)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"backend profile {str(path)!r} is not valid TOML: {exc}") from None
    allowed = {f.name for f in fields(Profile)} - {"path"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(
            f"backend profile {str(path)!r}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(sorted(allowed))}"
        )
    data.setdefault("name", path.stem)
    if "kind" not in data:
        raise ValueError(
            f"backend profile {str(path)!r} has no 'kind'; choose one of {', '.join(KINDS)}"
        )
    return Profile(**data, path=str(path))


_SV_DESCRIPTION = "exact torch statevector engine (default), exact adjoint gradients"
_NOTICED: set[str] = set()


def _alias_notice(name: str) -> None:
    """Print, once per process, that ``name`` is a deprecated alias (stderr, one line)."""
    if name not in _NOTICED:
        _NOTICED.add(name)
        print(
            f"note: backend {name!r} is deprecated, renamed {ALIASES[name]!r} (it runs the "
            f"in-package density-matrix engine, not Aer); loading {ALIASES[name]!r}",
            file=sys.stderr,
        )


def profile_problems(p: Profile, n_qubits: int | None = None) -> list[str]:
    """Everything wrong with profile ``p`` (checked before any worker starts)."""
    where = f"backend {p.name!r}"
    out = []
    if p.kind not in KINDS:
        return [f"{where}: unknown kind {p.kind!r}; choose one of {', '.join(KINDS)}"]
    if p.shots is not None and (not isinstance(p.shots, int) or p.shots <= 0):
        out.append(f"{where}: shots must be a positive integer, got {p.shots!r}")
    if p.method not in AER_METHODS:
        out.append(f"{where}: unknown method {p.method!r}; choose one of {', '.join(AER_METHODS)}")
    elif p.method != "automatic" and p.kind not in ("aer", "aer_device"):
        out.append(f"{where}: method is an Aer simulation method, for Aer kinds only")
    if p.optimization_level not in (0, 1, 2, 3):
        out.append(f"{where}: optimization_level must be 0-3, got {p.optimization_level!r}")
    if p.kind == "statevector" and p.shots is not None:
        out.append(f"{where}: the statevector engine is exact; use an aer profile for shots")
    if p.kind == "aer_device" and p.shots is None:
        out.append(f"{where}: kind {p.kind!r} samples; set shots")
    if p.kind == "ibm_runtime" and p.shots is None and not p.runtime.get("precision"):
        out.append(f"{where}: kind 'ibm_runtime' samples; set shots or [runtime] precision")
    if p.kind == "ibm_runtime" and p.shots is not None and p.runtime.get("precision"):
        out.append(f"{where}: set shots or [runtime] precision, not both")
    out.extend(gradient_problems(p))
    if p.kind == "aer_device" and not p.noise_source:
        out.append(f"{where}: kind 'aer_device' needs noise_source (a fake backend name)")
    devices = []
    if p.noise_source:
        devices.append(p.noise_source)
    if p.kind == "ibm_runtime":
        bad = set(p.runtime) - set(RUNTIME_KEYS)
        if bad:
            out.append(
                f"{where}: unknown [runtime] key(s) {', '.join(sorted(bad))}; "
                f"accepted: {', '.join(RUNTIME_KEYS)}"
            )
        out.extend(runtime_option_problems(p))
        fakes = runtime_targets(p) if is_local(p) else []
        if fakes:
            devices.extend(fakes)
        else:
            out.extend(_credential_problems(p))
    for dev in devices:
        try:
            backend = fake_backend(dev)
        except ValueError as exc:
            out.append(f"{where}: {exc}")
            continue
        if n_qubits is not None and backend.num_qubits < n_qubits:
            out.append(f"{where}: {dev} has {backend.num_qubits} qubits, the VQC needs {n_qubits}")
    return out


def gradient_problems(p: Profile) -> list[str]:
    """One-line problems with a profile's ``gradient``, ``spsa_perturbation``, ``spsa_seed``."""
    where = f"backend {p.name!r}"
    if p.gradient not in GRADIENTS:
        return [f"{where}: unknown gradient {p.gradient!r}; choose one of {', '.join(GRADIENTS)}"]
    out = []
    c, seed = p.spsa_perturbation, p.spsa_seed
    if p.kind == "statevector" and p.gradient != "param_shift":
        out.append(
            f"{where}: gradient = {p.gradient!r} needs a Qiskit kind; the statevector engine "
            f"differentiates exactly (accepted here: param_shift)"
        )
    if p.gradient != "spsa" and (c is not None or seed is not None):
        out.append(f"{where}: spsa_perturbation/spsa_seed need gradient = 'spsa'")
    if c is not None and (
        isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0
    ):
        out.append(
            f"{where}: spsa_perturbation = {c!r} is not accepted; expected a float > 0 "
            f"(radians, default {DEFAULT_SPSA_PERTURBATION})"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        out.append(f"{where}: spsa_seed = {seed!r} is not accepted; expected an integer")
    return out


def is_local(p: Profile) -> bool:
    """True for a Runtime profile in local testing mode (fake backends, no network)."""
    return bool(p.runtime.get("fake_backend") or p.runtime.get("fake_backends"))


def needs_qpu_cap(p: Profile) -> bool:
    """True for a profile that runs on a real (billed) IBM QPU: ``train`` requires
    ``--max-qpu-seconds`` for it (local testing mode and simulators need none)."""
    return p.kind == "ibm_runtime" and not is_local(p)


def runtime_targets(p: Profile) -> list[str]:
    """The backend names of a Runtime profile, in worker order (fake backend class names in
    local testing mode, IBM backend names otherwise)."""
    rt = p.runtime
    if is_local(p):
        names = rt.get("fake_backends") or [rt["fake_backend"]]
    else:
        names = rt.get("backends") or ([rt["backend"]] if rt.get("backend") else [])
    return [names] if isinstance(names, str) else list(names)


def backend_for_rank(p: Profile, rank: int) -> str:
    """The backend that worker process ``rank`` uses: ``targets[rank % len(targets)]``."""
    names = runtime_targets(p)
    return names[rank % len(names)]


def runtime_option_problems(p: Profile) -> list[str]:
    """One-line problems with a Runtime profile's ``[runtime]`` table (keys, values, targets)."""
    where = f"backend {p.name!r}"
    out = []
    for key, value in p.runtime.items():
        if key not in RUNTIME_OPTIONS:
            continue
        choices, check = RUNTIME_OPTIONS[key]
        if choices is not None and (value not in choices or isinstance(value, bool)):
            accepted = ", ".join(repr(c) for c in choices)
            out.append(
                f"{where}: [runtime] {key} = {value!r} is not accepted; choose one of {accepted}"
            )
        elif check is not None and not check[0](value):
            out.append(f"{where}: [runtime] {key} = {value!r} is not accepted; expected {check[1]}")
    for key in ("backends", "fake_backends"):
        v = p.runtime.get(key)
        if v is not None and (
            not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v)
        ):
            out.append(
                f"{where}: [runtime] {key} must be a non-empty list of backend names, got {v!r}"
            )
    if p.runtime.get("backend") and p.runtime.get("backends"):
        out.append(f"{where}: set [runtime] backend or backends, not both")
    if p.runtime.get("fake_backend") and p.runtime.get("fake_backends"):
        out.append(f"{where}: set [runtime] fake_backend or fake_backends, not both")
    if p.runtime.get("dd_sequence") and p.runtime.get("dynamical_decoupling") is False:
        out.append(f"{where}: [runtime] dd_sequence is set but dynamical_decoupling = false")
    return out


def _credential_problems(p: Profile) -> list[str]:
    where = f"backend {p.name!r}"
    try:
        from qiskit_ibm_runtime import QiskitRuntimeService
    except ImportError:
        return [f"{where} needs qiskit-ibm-runtime (pip install 'qa3c-qiskit[ibm]')"]
    if not runtime_targets(p):
        return [f"{where}: set [runtime] backend (an IBM backend name) or fake_backend"]
    try:
        accounts = QiskitRuntimeService.saved_accounts()
    except Exception:  # noqa: BLE001 - an unreadable account file is the same as none
        accounts = {}
    if not accounts and not os.environ.get("QISKIT_IBM_TOKEN"):
        return [
            f"{where}: no saved IBM Quantum credentials (run QiskitRuntimeService.save_account(...) "
            f"or set [runtime] fake_backend for local testing mode)"
        ]
    return []


def resolve(name: str, shots: int | None = None, n_qubits: int | None = None) -> Profile:
    """Load and check the profile ``name`` (``shots`` overrides its shot count)."""
    p = load_profile(name)
    if shots is not None:
        p = replace(p, shots=shots)
    problems = profile_problems(p, n_qubits)
    if problems:
        raise ValueError("; ".join(problems))
    return p


def check_backend(name: str) -> None:
    """Raise a one-line ValueError if ``name`` is not a usable backend (unknown or bad profile)."""
    resolve(name)
