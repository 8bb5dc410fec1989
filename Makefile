# The two commands of the README: `make run` and `make test`. Both set everything up first.
TRIALS ?= 50

.PHONY: run test test-fast docs setup setup-test bench bench-search bench-front bench-trials-per-device bench-compile gpu-check mutmut

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

run: setup
	.venv/bin/kdsearch run --trials $(TRIALS)

test: setup-test
	@bash scripts/test.sh

# The inner loop: lint, then every test not marked slow (real processes, servers, browsers, real training)
test-fast: setup-test
	@bash scripts/test.sh -m "not slow" -q

# The docs site (docs/, mkdocs.yml): regenerate the reference pages, then serve it on http://127.0.0.1:8000
docs: setup-test
	.venv/bin/python docs/gen_reference.py
	.venv/bin/mkdocs serve

bench: setup
	.venv/bin/python benchmarks/bench_trial_loop.py

# Mutation testing of the pure modules named in pyproject.toml [tool.mutmut] (scores: benchmarks/RESULTS.md)
mutmut: setup-test
	rm -rf mutants && .venv/bin/mutmut run && .venv/bin/mutmut results

# The search-quality benchmark (benchmarks/RESULTS.md §7): the grid (~15 min on 2 cores, resumable), then the replays
bench-search: setup
	.venv/bin/python benchmarks/bench_search.py grid --out benchmarks/search/grid.json
	.venv/bin/python benchmarks/bench_search.py simulate --grid benchmarks/search/grid.json --out benchmarks/search

# Does the search find the accuracy-vs-cost front cheaply? (benchmarks/RESULTS.md §11): the candidates' grid
# (~15 min on 2 cores, resumable), then the strategies replayed on it, scored by hypervolume vs epochs
bench-front: setup
	.venv/bin/python benchmarks/bench_front.py grid --out benchmarks/front/grid.json
	.venv/bin/python benchmarks/bench_front.py simulate --grid benchmarks/front/grid.json --out benchmarks/front --png
	.venv/bin/python benchmarks/bench_front.py simulate --grid benchmarks/front/grid.json --out benchmarks/front/onnx_latency --cost onnx_latency_ms

# Trials/hour with K trials trained at once (stacked) vs one at a time (benchmarks/RESULTS.md §8)
bench-trials-per-device: setup
	.venv/bin/python benchmarks/bench_trials_per_device.py --json benchmarks/trials_per_device/result.json

# Seconds per trial, eager vs runtime.compile (torch.compile, compile time included), 50 default-study trials
bench-compile: setup
	.venv/bin/python benchmarks/bench_compile.py --json benchmarks/compile/result.json

# The prepared GPU check (benchmarks/README.md): on a CUDA machine, ≤ 8 min, one JSON per part and a summary
gpu-check: setup
	bash benchmarks/gpu_check.sh runs/gpu_check
