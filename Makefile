# `make demo` trains a network; `make test` runs the whole suite. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-slow clean

# The bundled pip (23.2) installs editable pyproject packages as it is: no upgrade to download.
# The .pyc files must exist: these machines set PYTHONDONTWRITEBYTECODE=1, so without them every test
# process (xdist workers, torchrun ranks) would compile torch from source. pip compiles one file at a
# time, the packages' own tests/ folders (a fifth of the source) included; compileall does it on every
# core and leaves those out (idle 2-core Xeon: 94 s with pip compiling, about 63 s this way).
$(BIN)/resnetlab: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile -c constraints.txt -e '.[dev,plot,export]'
	@# -qq and `|| true`: a few files are written for newer Pythons (torch's py312_intrinsics.py) and do
	@# not compile here; pip skipped them silently as well, and nothing imports them on 3.11.
	$(BIN)/python -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib || true
	touch $@

install: $(BIN)/resnetlab

demo: install
	$(BIN)/resnetlab train --model resnet20 --recipe fast-cifar --epochs 15

# Two workers, one torch thread each: the tests are small and mostly single-threaded, so on a 2-core
# machine this halves the wall time; whole files go to one worker (module fixtures are built once).
TEST_WORKERS ?= 2

# Inductor's kernel cache inside the checkout: a shared /tmp cache written under another CPU capability
# (ATEN_CPU_CAPABILITY=avx2 for the forced-AVX2 run) crashed a later run's compiled kernels (segfault).
# `make test` leaves out the tests marked slow: inductor's torch.compile of ResNet-20/50 and the compiled
# bench modes, minutes of C++ compilation on a cold cache. A compiled training run through the engine
# (dynamo + AOT autograd, 8 layers) stays in; `make test-slow` runs the rest.
PYTEST = OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/.pytest_cache/inductor \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST) -m "not slow"

test-slow: install
	$(PYTEST) -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
