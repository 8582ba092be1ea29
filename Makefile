# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install into it first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: on this project's machines these builds lie on local disk. Override for yours,
# e.g. `make test TORCH="torch torchvision"` or a CPU wheel index.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-deploy.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-deploy.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m rfdetr.demo --output runs/demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

# UPSTREAM_PYTHON=/path/to/venv/bin/python (a venv with rfdetr==1.11.2) adds upstream's numbers side by side.
bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; \
		$(PY) $$b $(if $(UPSTREAM_PYTHON),--upstream-python $(UPSTREAM_PYTHON)) || exit 1; done

clean:
	rm -rf $(VENV) runs/demo .pytest_cache .ruff_cache
