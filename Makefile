# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv and install nestgen into it (torch pinned to the CPU wheel; see README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
DEMO_OUT ?= runs/pipeline

.PHONY: install demo test serve ui generate pictures screenshots bench-decode clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install "$(TORCH)" -e ".[dev]"
	touch $@

# The whole embedded pipeline as a DAG on a local Ray: data -> tokenizer -> tokenize -> train
# -> evaluate -> served sample, tracked in ./mlflow.db. Re-running skips finished steps. Like every
# nestgen command it listens on loopback only (pipelines/__init__.py), with no variable to set here.
demo: install
	$(VENV)/bin/nestgen run configs/digits_vq.yaml --set pipeline.output_url=$(DEMO_OUT)

# What to do after `make demo`, without activating .venv (or: `. .venv/bin/activate`, then the
# README's commands as written). `make serve` blocks; `make generate` asks it from another shell.
serve: install
	$(VENV)/bin/nestgen serve configs/serve_digits.yaml

ui: install
	@echo "MLflow UI: http://127.0.0.1:5000 (for the runs tables, set the GenAI / Model training switch at its top left to Model training)"
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

generate: install
	$(VENV)/bin/nestgen generate --url http://127.0.0.1:8000 --class 3 --schedule magnets --out sample.png

# The README's pictures from the finished `make demo` (and, with VIDEO_RUN=<output folder>, a
# video pipeline's frame strip), and screenshots of the MLflow UI on ./mlflow.db (needs chromium).
VIDEO_RUN ?=
pictures: install
	$(PY) -m scripts.readme_pictures --run $(DEMO_OUT) $(if $(VIDEO_RUN),--video-run $(VIDEO_RUN)) --out docs/images

screenshots: install
	$(PY) -m scripts.mlflow_screenshots --db mlflow.db --out docs/images

# One pytest process for the suite: the `cluster` tests (faults, `ray job submit`) run last, on
# one multi-node Ray cluster they share (tests/conftest.py chaos_cluster). Any non-zero exit
# fails, pytest's 5 (no test collected) too.
test: install
	$(PY) -m pytest

bench-decode: install
	$(PY) -m benchmarks.decode --json runs/bench_decode.json

clean:
	rm -rf $(VENV) runs .pytest_cache
