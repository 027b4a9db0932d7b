# Two commands a new user needs: `make demo` (set up + main job) and `make test` (set up + checks + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Omniglot zip of the tests and bench suites that use real images (--omniglot of `dml-dist bench`).
export DML_DIST_OMNIGLOT ?= ../shared/data/omniglot/images_background_small1.zip

# Debian packages that `dml-dist datasets` reads (docs/datasets.md); `.ci/run` installs them, and
# tests/integration/test_datasets.py keeps this list equal to the builders' own.
DATASET_PACKAGES := adwaita-icon-theme breeze-icon-theme elementary-icon-theme elementary-xfce-icon-theme \
  fonts-crosextra-caladea fonts-crosextra-carlito fonts-dejavu-core fonts-dejavu-extra fonts-freefont-ttf \
  fonts-gfs-didot fonts-hosny-amiri fonts-liberation2 fonts-lohit-deva fonts-noto-core fonts-paratype \
  fonts-samyak-deva fonts-sil-abyssinica fonts-sil-andika fonts-sil-charis fonts-sil-ezra fonts-stix \
  fonts-symbola fonts-tlwg-garuda-ttf fonts-tlwg-loma-ttf fonts-urw-base35 gnome-colors-common librsvg2-bin \
  lxde-icon-theme numix-icon-theme suru-icon-theme tango-icon-theme

.PHONY: setup demo test check lint typecheck unit bench clean dataset-packages

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

# A new run directory each time (the default: runs/quickstart-<YYYYmmdd-HHMMSS>); a run is only
# continued with --resume --run-dir RUN.
demo: $(STAMP)
	$(BIN)/dml-dist train configs/quickstart.yaml

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

# The list, for `apt-get install $(make -s dataset-packages)` (fonts and icon themes: 75 MB to download).
dataset-packages:
	@echo $(DATASET_PACKAGES)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
