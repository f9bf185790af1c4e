# Two commands do all the set-up on a fresh machine:
#   make train   -> short quantum A3C run on CartPole-v1 (exact statevector backend, local processes)
#   make test    -> lint + the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test lint bench setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU wheel; must come before anything that pulls torch
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# A few minutes: 1,000 episodes with a raised learning rate (5e-3) so the curve visibly rises;
# drop --lr for the paper's 1e-4 (which needs ~7,000 episodes on CartPole).
train: $(STAMP)
	$(BIN)/python -m qa3c_qiskit.train --env CartPole-v1 --model quantum --backend statevector --episodes 1000 --lr 0.005 --out runs/

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
