# Everything a fresh machine needs: `make demo` (main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv

.PHONY: venv demo test test-all lock clean

# The virtual environment, created from the lock file when missing or stale.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.5.11
	$(UV) pip sync --python $(PY) requirements.lock
	$(UV) pip install --python $(PY) --no-deps -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/mtopt config show

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
