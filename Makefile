# twin — every target runs in .venv (created on first use), so `make test` on a fresh clone is one command.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU boxes: torch==2.13.0 is a CPU build on local disk here. On a GPU box pass e.g. TORCH='torch>=2.7'.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.7' || echo 'torch==2.13.0')

RAW ?= data/raw
PREPARED ?= data/prepared
CHECKPOINT ?= checkpoints/tiiuae/falcon-7b
OUT ?= out/twin

.DEFAULT_GOAL := help
.PHONY: help install test lint collect

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install twin with dev extras

test: $(STAMP) ## run the whole test suite
	$(PY) -m pytest

lint: $(STAMP) ## ruff + mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy collect prepare $(wildcard finetune serve ui)

collect: $(STAMP) ## export your chats: Telethon if TELEGRAM_API_ID is set, else EXPORT=path/to/result.json
	$(PY) -m collect auto --out $(RAW) $(if $(EXPORT),--export $(EXPORT),)
