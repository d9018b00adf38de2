# Two entry points (README Quick start): `make demo` and `make test`.
# Each creates .venv with Python 3.11, installs the CPU torch wheel first (so pip never pulls a
# CUDA build), builds elasticdeform from source (its 0.5.1 wheel fails to import with numpy 2),
# then the project.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
CASE ?= $(DATA)/prostate158/001/t2.nii.gz

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "numpy>=1.24,<2.4" setuptools wheel
	$(BIN)/pip install -q --no-build-isolation --no-binary elasticdeform elasticdeform==0.5.1
	$(BIN)/pip install -q -e ".[test,browser]"
	$(BIN)/python -c "import elasticdeform, torch, monai; print('ok: torch', torch.__version__, 'monai', monai.__version__)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/ensemble predict $(CASE) -o demo_out --report --force
	@echo "outputs in demo_out/"

test: venv
	$(BIN)/python -m pytest -q

.PHONY: venv demo test
