# The llm workspace. `make help` lists the targets.
SHELL := /bin/bash
UV ?= uv
RUN := $(UV) run --frozen
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

setup: ## install every package and the dev tools into .venv (uv sync --frozen)
	@command -v $(UV) >/dev/null || python3 -m pip install -q uv
	$(UV) sync --frozen

test: setup ## the test suite (under 10 minutes on 2 cores), then build and install-check every wheel
	$(RUN) pytest -m "not slow" -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory check-wheels

test-all: setup ## every test, the slow ones included
	$(RUN) pytest -q $(PYTEST_ARGS)

lint: setup ## ruff check and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

build: ## build every package's sdist and wheel into dist/ (no workspace sources)
	rm -rf dist
	$(UV) build --all-packages --no-sources -o dist -q

check-wheels: build ## install each wheel alone (with its siblings' wheels) into a fresh venv and import it
	$(UV) run --frozen --no-project python scripts/check_wheels.py dist

.PHONY: help setup test test-all lint format build check-wheels

demo: setup ## a tiny random checkpoint, described, and a long-context memory estimate
	$(RUN) llm-core init --config configs/tiny.yaml --out .demo/tiny
	$(RUN) llm-core info .demo/tiny
	$(RUN) llm-core estimate --config configs/llama-125m.yaml --context 2K,32K,128K,1M

.PHONY: demo

bench: setup ## run every benchmark in benches/ (peers group: llama-cpp-python, gguf); figures in docs/benchmarks.md
	@set -e; for f in benches/*.py; do echo "== $$f"; $(UV) run --frozen --group peers python $$f; done

test-peers: setup ## tests against peer engines (llama-cpp-python), with the peers group
	$(UV) run --frozen --group peers pytest -m peers -q $(PYTEST_ARGS)

.PHONY: bench test-peers

demo-model: setup ## train the bundled demo model (stdlib docstrings + generated Q&A, ~30 min on 2 cores)
	@mkdir -p .demo/model && date +%s > .demo/model/started
	$(RUN) python -m llm_train.demo corpus .demo/model/corpus
	$(RUN) llm-train prepare .demo/model/corpus/stdlib.jsonl .demo/model/corpus/instructions.jsonl \
		--train-tokenizer --vocab-size 4096 --out .demo/model/data
	rm -rf .demo/model/run
	$(RUN) llm-train pretrain --config configs/demo.yaml
	$(RUN) python -m llm_train.demo card .demo/model/run --data .demo/model/data \
		--dest packages/llm-infer/src/llm_infer/demo_model --started $$(cat .demo/model/started)

.PHONY: demo-model

chat: setup ## the chat REPL on SmolLM2-135M-Instruct (MODEL=demo: the toy; a pipe on stdin: one answer)
	$(RUN) llm-repl $(if $(MODEL),--model $(MODEL))

smoke-repl: setup ## llm-repl in tmux: type a question, check an answer and the stats line appear
	scripts/smoke_repl.sh

.PHONY: chat smoke-repl

serve: setup ## llm-serve on SmolLM2-135M-Instruct at http://127.0.0.1:8000 (MODEL=demo: the toy)
	$(RUN) llm-serve $(if $(MODEL),--model $(MODEL))

.PHONY: serve
