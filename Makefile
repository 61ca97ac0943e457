# `make demo` trains a network; `make test` runs the whole suite. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/resnetlab: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,plot,export]'
	touch $@

install: $(BIN)/resnetlab

demo: install
	$(BIN)/resnetlab train --model resnet20 --recipe fast-cifar --epochs 15

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
