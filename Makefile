# Two commands a new user needs: `make demo` (set up + main job) and `make test` (set up + checks + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Omniglot zip of the tests and bench suites that use real images (--omniglot of `dml-dist bench`).
export DML_DIST_OMNIGLOT ?= ../shared/data/omniglot/images_background_small1.zip

.PHONY: setup demo test check lint typecheck unit bench clean

setup: $(STAMP)

# torch goes in first and pinned, from the registry's standard build (CUDA-capable, runs on CPU):
# timm needs torchvision, and the registry's torchvision wheels are built against that build, not
# the CPU-only one (`import torchvision` fails there with `torchvision::nms does not exist`).
# `--isolated` skips a local pip configuration whose wheel folder would win for torch==2.13.0.
TORCH_PIP_FLAGS ?= --isolated $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),--cert /etc/ssl/certs/ca-certificates.crt)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIP_FLAGS) torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -q -e ".[cpu,test]"
	touch $(STAMP)

# A new run directory each time: a run directory with checkpoints is only continued with --resume.
demo: $(STAMP)
	$(BIN)/dml-dist train configs/quickstart.yaml --run-dir runs/quickstart-$$(date +%Y%m%d-%H%M%S)

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check dml_dist tests
	$(BIN)/ruff format --check dml_dist tests

typecheck: $(STAMP)
	$(BIN)/mypy dml_dist

test: check
	$(BIN)/pytest -q --durations=15 tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/dml-dist bench losses --json runs/bench-losses.json

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
