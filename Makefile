# make demo   set up .venv and run the main job on the embedded dataset
# make test   set up .venv and run the whole test suite (what CI runs)
# make test-fast  skip the slow integration tests
# make bench  the region-engine benchmark (minutes; writes bench/results/)
# make compare  our methods against the published cost model and regioncam, side by side (minutes)
# make gpu-check  the engine on this machine's GPU against its CPU: CUDA tests, equality, regions/s
#                 (at most 5 min; writes bench/results/gpu-check/gpu-check.{json,md}; needs only torch
#                 and numpy, so on a GPU node without .venv: make gpu-check PY=python3)
PY := .venv/bin/python

.PHONY: venv venv-dev demo test test-fast bench compare gpu-check clean
venv:
	bash scripts/setup-venv.sh

venv-dev:
	bash scripts/setup-venv.sh --dev

demo: venv
	$(PY) -m jobs demo

test: venv-dev
	$(PY) -m pytest -q -n auto --dist loadfile --durations=15

test-fast: venv-dev
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

bench: venv
	$(PY) bench/engine.py

compare: venv-dev
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) bench/compare.py --reps 3 --threads 1,2

gpu-check:
	$(PY) bench/gpu.py --out bench/results/gpu-check

clean:
	rm -rf .pytest_cache build *.egg-info
