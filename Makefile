# rulefinder: two commands on a fresh machine.
#   make run   creates .venv, installs, runs the main job (rule catalogue, example
#              recordings inspected, a tour of the zoo trained into runs/tour.zarr)
#   make test  creates .venv if missing, installs, runs the whole test suite (fast + slow tier)

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_CPU_VERSION ?= 2.13.0
# The torch build is chosen first: the CPU build on machines without an NVIDIA GPU (small,
# and on this kind of machine a wheel on local disk), PyPI's default (CUDA) build where
# nvidia-smi answers. Its exact version is then written to a constraints file so that nothing
# installed afterwards can replace it.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: run test test-fast test-slow install browser examples bench clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),yes)
	$(PIP) install "torch>=2.3"
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
else
	$(PIP) install -c constraints-cpu.txt "torch==$(TORCH_CPU_VERSION)"
	cp constraints-cpu.txt $(VENV)/constraints.txt
endif
	$(PIP) install -c $(VENV)/constraints.txt -e ".[all,test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/rulefinder rules
	$(VENV)/bin/rulefinder inspect examples/mlp_backprop.npz examples/mlp_backprop.zarr.zip examples/ophys_mouse examples/ephys_units
	$(PY) -m training_zoo run tour --store runs/tour.zarr --resume
	$(VENV)/bin/rulefinder store info runs/tour.zarr
	$(VENV)/bin/rulefinder predict examples/mlp_backprop.npz examples/ophys_mouse examples/ephys_units

# The page test drives Debian's chromium through Playwright (no browser downloads): installed
# here where apt-get works as root; elsewhere that test is skipped, except under CI=true.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: no chromium and no apt-get as root: tests/test_web_page.py will be skipped"; fi; }

test: install browser
	$(PY) -m pytest -m "not slow" -q
	$(PY) -m pytest -m slow -q || test $$? -eq 5

test-fast: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install browser
	$(PY) -m pytest -m slow -q

examples: install
	$(PY) examples/make_examples.py

bench: install
	$(PY) benchmarks/trainer.py
	$(PY) benchmarks/features.py
	$(PY) benchmarks/predict.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info runs
