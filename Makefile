# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv and install nestgen into it (torch pinned to the CPU wheel; see README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: install demo test bench-decode clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install "$(TORCH)" -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/nestgen demo configs/digits.yaml --out $(DEMO_OUT)

# pytest exits 5 when it collects no test: that is a broken suite, not a pass.
test: install
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	exit $$rc

bench-decode: install
	$(PY) -m benchmarks.decode --json runs/bench_decode.json

clean:
	rm -rf $(VENV) runs .pytest_cache
