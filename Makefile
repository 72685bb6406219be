# Two commands: `make demo` runs the main job on the bundled dataset, `make test` runs the tests.
# Both create .venv and install samcache into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# --no-compile: pip would byte-compile every installed module (torch's thousands) up front, 47 s of a 121 s
# install measured on the 2-core machine (74 s without); Python compiles what is imported on first use instead.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
	touch $@

install: $(BIN)/.installed

# the peers' own venv (micro-sam 1.8.14, elf; their numcodecs is below samcache's pin): the micro-sam import tests
# run micro-sam there to write real embedding files; benchmarks/peers/run.py times against it. It links the torch stack
# of .venv rather than holding a second copy (setup.sh), so it is rebuilt whenever .venv is.
PEERS := benchmarks/peers/.venv/bin/.installed
$(PEERS): benchmarks/peers/setup.sh $(BIN)/.installed
	bash benchmarks/peers/setup.sh
	touch $@

demo: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# the full suite: what CI runs
test: $(BIN)/.installed $(PEERS)
	$(BIN)/python -m pytest -q

# everything but the tests marked slow (real-data finetunes, stock loading, SIGKILL, the EM CLI, a cluster)
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

.PHONY: install demo test test-fast
