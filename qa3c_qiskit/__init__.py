"""qa3c-qiskit: quantum asynchronous advantage actor-critic (QA3C) on Qiskit."""

__version__ = "0.1.0"
