# Two commands a user needs: `make demo` and `make test`. Each sets up .venv on its own first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCHMARKS := $(filter-out benchmarks/_common.py benchmarks/gpu_check.py,$(wildcard benchmarks/*.py))

.PHONY: install test test-quick demo lint bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# The whole suite, slow tests included (CI runs this); GPU tests skip themselves without CUDA.
test: install
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(BIN)/python -m pytest -q -m ''

# The suite without the tests marked slow (the training-quality ones), for quick checks while editing.
test-quick: install
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(BIN)/python -m pytest -q

demo: install
	$(BIN)/unimo-pipe demo --out demo-out

lint: install
	$(BIN)/ruff check unimo_pipe tests benchmarks

bench: install
	for script in $(BENCHMARKS); do $(BIN)/python $$script || exit 1; done

# On a CUDA machine: pytest -m gpu plus every benchmark at GPU size, report in gpu-check.json.
# Without CUDA it prints one line and succeeds, running nothing.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out gpu-check.json

clean:
	rm -rf $(VENV) demo-out gpu-check.json
