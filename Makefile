# Quick start: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt
DATA   ?= ../shared/data

.PHONY: demo serve test system-deps lint typecheck bench-quick readme-check clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e ".[test,bench]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/monorec demo --workdir runs/demo

# the demo's deployment over HTTP: the page at http://127.0.0.1:8000/, the API docs at /docs
serve: $(VENV)/.installed
	$(VENV)/bin/monorec serve --root runs/demo/deployment --registry runs/demo/registry --env $(or $(ENV),default)

# redis-server and chromium (apt-get when missing); the suite then fails instead of skipping a test
system-deps:
	bash scripts/system-deps.sh

test: system-deps $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/mypy
	MONOREC_NO_SKIPS=1 $(PY) -m pytest
	$(MAKE) readme-check
	$(MAKE) bench-quick

# every bash and python block of the README, in order, in one shell, after `make demo` (in a scratch folder)
readme-check: $(VENV)/.installed-test
	$(PY) scripts/readme_check.py

bench-quick: $(VENV)/.installed-test
	mkdir -p runs/bench-quick
	$(PY) bench/q1_consolidated_vs_separate.py --quick --data $(DATA)/ml-latest-small --out runs/bench-quick/q1.json
	$(PY) bench/q3_standard_protocol.py --quick --data $(DATA)/ml-latest-small --out runs/bench-quick/q3.json
	$(PY) bench/q2_census_multitask.py --quick --data $(DATA)/census-income-kdd --out runs/bench-quick/q2.json
	$(PY) bench/b7_training_throughput.py --quick --out runs/bench-quick/b7.json
	$(PY) bench/b1_index.py --quick --out runs/bench-quick/b1.json
	$(PY) bench/b5_switch_under_load.py --quick --out runs/bench-quick/b5.json
	$(PY) bench/b6_freshness.py --quick --out runs/bench-quick/b6.json
	$(PY) bench/b9_bulk_embed.py --quick --out runs/bench-quick/b9.json
	$(PY) bench/b12_scale.py --quick --out runs/bench-quick/b12.json
	$(PY) bench/b10_event_freshness.py --quick --out runs/bench-quick/b10.json
	$(PY) bench/b3_latency.py --quick --out runs/bench-quick/b3.json
	$(PY) bench/b11_replica_memory.py --quick --out runs/bench-quick/b11.json
	$(PY) bench/b4_ranking_overhead.py --quick --out runs/bench-quick/b4.json
	$(PY) bench/b8_capacity.py --quick --out runs/bench-quick/b8.json
	$(PY) bench/profile_request.py --quick --out runs/bench-quick/profile.json
	$(PY) bench/gpu_paths.py --quick --out runs/bench-quick/gpu_paths.json
	$(PY) bench/b13_compaction.py --quick --out runs/bench-quick/b13.json
	$(PY) bench/b14_checkpoint_under_load.py --quick --out runs/bench-quick/b14.json

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
