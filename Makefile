# One command to run the service, one to run every test. Both set up .venv first and reuse it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed-$(shell sha1sum tests/kserve-sdk.txt | cut -c1-12)

.PHONY: setup run test test-order lint bench bench-cold-start evaluate chaos soak proto

setup: $(STAMP) $(KSERVE_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# A fresh venv's setuptools cannot build editable installs without `wheel`; pin a newer one.
	$(PY) -m pip install --quiet --upgrade pip setuptools==80.9.0
	# --no-build-isolation: the editable install only adds a path; no build tools are fetched.
	$(PY) -m pip install --quiet --no-build-isolation -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

# KServe's Python SDK for one test (test_v2_oip.py runs it as a subprocess), in a venv of its own:
# every kserve release asks for protobuf<7, and Ray's and grpcio-tools' are 7, so it cannot join
# .venv; and its gRPC messages share tritonclient's `inference.*` names, so it cannot share a
# process with them. tests/kserve-sdk.txt is what pip resolved for it, installed as pinned.
$(KSERVE_STAMP): tests/kserve-sdk.txt | $(STAMP)
	rm -rf $(KSERVE_VENV)
	$(PY) -m venv --without-pip $(KSERVE_VENV)
	$(PY) -m pip --python $(KSERVE_VENV)/bin/python install --quiet --no-deps -r tests/kserve-sdk.txt
	touch $@

# `vision-serve run` is `serve run --address local CONFIG` with serve.env, Ray Serve's
# process-level settings (the HAProxy edge), and Ray's Prometheus metrics on a fixed port,
# http://127.0.0.1:8080/metrics (vision_serve/serve_local.py, METRICS_EXPORT_PORT; README:
# Metrics); `make run METRICS_PORT=9090` moves them. `serve run serve_config.yaml` typed by hand
# runs without either: Serve's Python proxy, and a random metrics port.
run: setup
	$(VENV)/bin/vision-serve run $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT)) serve_config.yaml

# Unit and integration tests share one Ray cluster; system tests start their own Ray, so they
# run in a second pytest process after the first has shut its cluster down.
test: setup
	$(PY) -m pytest --durations=12 tests/unit tests/tools tests/integration
	$(PY) -m pytest --durations=4 tests/system

# The integration tier in another module order, to show no module needs the one before it:
# ORDER=reverse, ORDER=shuffle:<seed>, or ORDER=alone (each module in its own pytest and Ray
# cluster; ~12 minutes). Exit 1 if any module fails.
ORDER ?= reverse
test-order: setup
ifeq ($(ORDER),alone)
	@failed=""; for m in tests/integration/test_*.py; do \
	  log=/tmp/test-order-$$(basename $$m .py).log; \
	  if $(PY) -m pytest -q -p no:cacheprovider $$m >$$log 2>&1; then echo "$$m: $$(tail -1 $$log)"; \
	  else echo "$$m FAILED: $$(tail -1 $$log) (log: $$log)"; failed="$$failed $$m"; fi; \
	done; test -z "$$failed"
else
	INTEGRATION_ORDER=$(ORDER) $(PY) -m pytest --durations=12 tests/integration
endif

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m tools.render --check

# The benchmark (bench/README.md): the raw pipeline, two plain Ray Serve apps, LitServe and
# TorchServe (with `pip install -e '.[bench,torchserve]'` and Java 17) and the graph, each started
# in turn on 127.0.0.1:8000; ~10 minutes.
bench: setup
	$(PY) -m bench.run

# The cold start of the model that scales to zero (bench/README.md, "Cold start"): serve_config.yaml
# on 127.0.0.1:8300, its first request after each scale-down timed and split; ~4 minutes.
bench-cold-start: setup
	$(PY) -m bench.cold_start $(COLD_START_ARGS)

# Accuracy of the served shapes detector, then segmenter, over HTTP (each starts its service on a
# free port).
evaluate: setup
	$(PY) -m shapes.evaluate --json artifacts/evaluate.json
	$(PY) -m shapes.evaluate --segmenter --json artifacts/evaluate_segmenter.json

# Replicas of every stage SIGKILLed at random under mixed load, and two rolling deploys (README,
# Operations: Chaos): the echo model, 2 replicas per stage, 127.0.0.1:8200 only; ~4 minutes; exit
# 1 if an image is lost or answered with another image's result. `make chaos CHAOS_ARGS='--seconds
# 60'` for a short run; CHAOS_ARGS=--client runs python -m vision_client over 480 images instead.
chaos: setup
	$(PY) -m scripts.chaos $(CHAOS_ARGS)

# Ten minutes of make chaos's mixed load with a replica SIGKILLed every minute (one replica per
# stage never), each process's memory after a 60 s warm-up and at the end (README, Operations:
# Soak); 127.0.0.1:8210 only; ~13 minutes; exit 1 if an image is lost or misjoined or a spared
# replica grew more than 10 %. `make soak SOAK_ARGS='--minutes 2'` for a short run.
soak: setup
	$(PY) -m scripts.soak $(SOAK_ARGS)

# Regenerate the Open Inference Protocol's gRPC modules from their .proto (grpcio-tools, a dev
# dependency); the generated files are committed.
proto:
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. deployments/oip_proto/grpc_predict_v2.proto
