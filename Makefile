# `make demo` trains a network; `make test` runs the whole suite. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-slow clean

$(BIN)/resnetlab: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,plot,export]'
	touch $@

install: $(BIN)/resnetlab

demo: install
	$(BIN)/resnetlab train --model resnet20 --recipe fast-cifar --epochs 15

# Two workers, one torch thread each: the tests are small and mostly single-threaded, so on a 2-core
# machine this halves the wall time; whole files go to one worker (module fixtures are built once).
TEST_WORKERS ?= 2

# Inductor's kernel cache inside the checkout: a shared /tmp cache written under another CPU capability
# (ATEN_CPU_CAPABILITY=avx2 for the forced-AVX2 run) crashed a later run's compiled kernels (segfault).
# `make test` leaves out the tests marked slow: full-size torch.compile checks (ResNet-20/50), minutes
# of C++ compilation on a cold cache. An 8-layer net's compiled training run stays in and covers that path.
PYTEST = OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/.pytest_cache/inductor \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST) -m "not slow"

test-slow: install
	$(PYTEST) -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
