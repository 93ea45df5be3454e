# Set-up and entry points. `make run` and `make test` create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

# The main job's inputs; override on the command line for your own archive or backbone.
SOURCE ?= ../shared/data/flower_photos_dev.tgz
BACKBONE ?= ../shared/backbones/efficientnet_lite0_feature_vector
BUCKET ?= $(CURDIR)/build/bucket
RUN_ARGS ?=

.PHONY: run test compile venv

venv: $(STAMP)

$(STAMP): requirements.lock requirements-test.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --no-deps -r requirements.lock -r requirements-test.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(VENV)/bin/python -m pip check
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m pipelines.cli run --source "$(SOURCE)" --backbone "$(BACKBONE)" --bucket "$(BUCKET)" $(RUN_ARGS)

compile: $(STAMP)
	$(VENV)/bin/python -m pipelines.cli compile

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
