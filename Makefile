# The two commands of the README: `make run` and `make test`. Both set everything up first.
TRIALS ?= 50

.PHONY: run test setup setup-test bench

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

run: setup
	.venv/bin/kdsearch run --trials $(TRIALS)

test: setup-test
	@bash scripts/test.sh

bench: setup
	.venv/bin/python benchmarks/bench_trial_loop.py
