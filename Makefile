# medops: the two commands are `make demo` and `make test`; everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MEDOPS_HOME ?= $(CURDIR)/.medops
export MEDOPS_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)

.PHONY: demo test test-slow test-browser test-dicom test-ohif ohif lint bench bench-dicom bench-quality bench-quality-full install system-deps ui-deps triton clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	bash infra/install-ui-deps.sh
	touch $(STAMP)

install: $(STAMP) ui-deps ohif

## The main job on embedded defaults: no cluster, no GPU.
demo: $(STAMP)
	$(BIN)/medops demo

## Everything the tests need (Python, Debian packages, the Triton venv), then the tests.
test: $(STAMP) system-deps ui-deps triton lint
	$(BIN)/pytest -m "not slow and not dicom and not ohif" -q

test-slow: $(STAMP) system-deps ui-deps triton
	$(BIN)/pytest -m slow -q

## The review page and operator console in Debian's chromium (Playwright); screenshots in
## .artifacts/browser/. Also part of make test.
test-browser: $(STAMP) system-deps ui-deps
	$(BIN)/pytest -m browser -q

## The DICOM edge against a real Orthanc, DCMTK, dciodvfy and PixelMed (about two minutes); as root:
## the session moves into a network namespace of its own, since Orthanc binds every interface.
test-dicom: $(STAMP) system-deps
	$(BIN)/pytest -m dicom tests/dicom -q

## The OHIF viewer (prebuilt, from npm) shows the DICOM SEG on the right pixels, in headless
## Chromium (Debian's) against a real Orthanc; as root, like test-dicom.
test-ohif: $(STAMP) system-deps ohif
	$(BIN)/pytest -m ohif tests/dicom -q

ohif:
	bash infra/ohif/install.sh

system-deps:
	bash infra/install-system-deps.sh

## Browser code the gateway's pages serve themselves (Plotly, from npm, into an ignored folder).
ui-deps:
	bash infra/install-ui-deps.sh

triton:
	bash infra/triton/setup.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy medops services pipelines
	$(BIN)/zizmor --offline --no-progress .github/workflows/

## Benchmarks that take minutes; bench-quality cross-validates the fast preset (about 45 min
## on 2 cores), bench-quality-full trains the full preset once on the held-out split (hours).
bench: $(STAMP) system-deps triton
	$(BIN)/python -m bench ingest routing gateway analyze int8 batching drift predlog

## The DICOM edge's ingest (files/s vs pynetdicom's storage SCP) and its end-to-end overhead;
## as root (Orthanc runs in a network namespace of its own).
bench-dicom: $(STAMP) system-deps
	$(BIN)/python -m bench.dicom_edge

bench-quality: $(STAMP)
	$(BIN)/python -m bench quality

bench-quality-full: $(STAMP)
	$(BIN)/python bench/quality.py --preset full --folds 1

clean:
	rm -rf $(VENV) .medops .pytest_cache .mypy_cache .ruff_cache

# --- Kubernetes, images and CI (docs/deploy.md) ---
TAG ?= dev
PROFILE ?= kind-cpu
PRESET ?= fast
SUBMIT_ARGS ?=

.PHONY: test-deploy images kind-up deploy podman-build k8s-base k8s-base-check pipeline-submit retrain-local

## Helm chart, kustomize overlays, images and workflows, checked offline.
test-deploy: $(STAMP)
	$(BIN)/pytest tests/deploy -q

## Build the gateway, monitor and pipeline images (ENGINE=docker|podman, REGISTRY, TAG, PUSH=1).
images:
	TAG=$(TAG) bash infra/images.sh

## A kind cluster (Kubernetes 1.30, no GPU) with the locally built images loaded.
kind-up:
	TAG=$(TAG) bash infra/kind/up.sh

## Install or upgrade the Helm release (PROFILE=kind-cpu|gpu|mesh|external-mlflow), then helm test.
deploy:
	bash infra/deploy.sh $(PROFILE)

## Optional: the gateway image built with podman on a debootstrap base (needs root; slow).
podman-build:
	TAG=$(TAG) bash infra/podman-build.sh

## Re-render the kustomize base from the chart; k8s-base-check fails when it is stale.
k8s-base: $(STAMP)
	$(BIN)/python infra/k8s/render_base.py

k8s-base-check: $(STAMP)
	$(BIN)/python infra/k8s/render_base.py --check

## Compile the pipeline and submit it to Kubeflow Pipelines (KFP_HOST, KFP_TOKEN;
## SUBMIT_ARGS="--cron '0 3 * * 0'" makes a recurring run).
pipeline-submit: $(STAMP)
	$(BIN)/medops pipeline compile --output $(MEDOPS_HOME)/medops-pipeline.yaml
	$(BIN)/python infra/kfp/submit.py --package $(MEDOPS_HOME)/medops-pipeline.yaml --trigger $${TRIGGER:-manual} $(SUBMIT_ARGS)

## Run the training pipeline on this machine (PRESET=fast|full).
retrain-local: $(STAMP)
	$(BIN)/medops pipeline run --preset $(PRESET)
