# Two commands do all the set-up: `make book` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kdnb-installed
export KDNB_PROFILE ?= quick
export KDNB_PROGRESS ?= 0

.PHONY: book test lab bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1 -e '.[book,test]'
	touch $(STAMP)

# Executes every chapter (quick profile) and builds the site into _build/html.
# -W turns warnings into errors; nb_execution_raise_on_error in _config.yml fails on a bad cell.
book: $(STAMP)
	$(BIN)/jupyter-book build . -W --keep-going

# Unit tests of kdnb, then every chapter as a throw-away notebook under nbval.
test: $(STAMP)
	rm -rf _build/nbval && mkdir -p _build/nbval
	for f in book/*.md; do $(BIN)/jupytext --quiet --to ipynb -o _build/nbval/$$(basename $${f%.md}).ipynb $$f || exit 1; done
	$(BIN)/python -m pytest tests _build/nbval --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:randomly

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=.

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf _build
