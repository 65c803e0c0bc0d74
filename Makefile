# Everything a fresh machine needs: `make demo` (main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv

.PHONY: venv sysdeps demo test test-all lock clean
# MuJoCo renders offscreen through EGL with Mesa's software driver (no GPU, no display).
SYSDEPS := libegl1 libegl-mesa0 libgl1-mesa-dri

# The virtual environment, created from the lock file when missing or stale.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(MAKE) --no-print-directory sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.5.11
	$(UV) pip sync --python $(PY) requirements.lock
	$(UV) pip install --python $(PY) --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# Installs the system libraries only where one is missing (needs root or sudo).
sysdeps:
	@dpkg -s $(SYSDEPS) >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(SYSDEPS); }

# The main job on the embedded default: local Ray, in-process Reverb, tabletop simulator.
demo: venv
	$(VENV)/bin/mtopt train --config configs/tabletop_state.py

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ""

# Re-resolve the pinned set after editing pyproject.toml's dependencies.
lock:
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) runs
