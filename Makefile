# Two commands do all the set-up: `make book` and `make test`. Both create .venv when missing.
SHELL  := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kdnb-installed
export KDNB_PROFILE ?= quick
# No progress bars in the site build's outputs or under nbval; `make lab` keeps them.
book test: export KDNB_PROGRESS ?= 0

.PHONY: book test lab bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1 numpy==2.4.6 mnist1d==0.0.2.post1 -e '.[book,test]'
	touch $(STAMP)

# Executes every chapter (quick profile) and builds the site into _build/html.
# -W turns warnings into errors; nb_execution_raise_on_error in _config.yml fails on a bad cell.
# --all: kdnb/ changes what the chapters print, which Sphinx's incremental build cannot see.
# The stamp tells tests/test_site.py that _build/html is a complete, successful build.
# On failure the last lines name the chapter, the cell and the claim that failed (book/_ext/kdnb_failures.py).
book: $(STAMP)
	rm -f _build/.book-built && mkdir -p _build
	set -o pipefail; $(BIN)/jupyter-book build --all . -W --keep-going 2>&1 | tee _build/book.log \
	  || { $(BIN)/python book/_ext/kdnb_failures.py _build/book.log; exit 1; }
	touch _build/.book-built

# Unit tests of kdnb, then every chapter (the book/*.md with a jupytext header) as a throw-away
# notebook under nbval.
test: $(STAMP)
	rm -rf _build/nbval && mkdir -p _build/nbval
	for f in $$(grep -l '^jupytext:' book/*.md); do $(BIN)/jupytext --quiet --to ipynb -o _build/nbval/$$(basename $${f%.md}).ipynb $$f || exit 1; done
	# pytest's exit code 5 means no test ran: that is a failure, not a pass.
	$(BIN)/python -m pytest tests _build/nbval --nbval-lax --nbval-current-env --nbval-cell-timeout=900; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

# JupyterLab on the project; book/*.md open as notebooks (see .jupyter/). As root: LAB_ARGS=--allow-root
lab: $(STAMP)
	$(BIN)/jupyter lab --config=.jupyter/jupyter_lab_config.py $(LAB_ARGS)

# Benchmarks print side-by-side ratios; BENCH_ARGS=--quick for fewer repeats (sweep takes its own flags).
BENCH_ARGS ?=
bench: $(STAMP)
	for f in bench/*.py; do case $$f in *sweep.py) $(BIN)/python $$f || exit 1;; *gpu.py) $(BIN)/python $$f --out _build/bench-gpu $(BENCH_ARGS) || exit 1;; *) $(BIN)/python $$f $(BENCH_ARGS) || exit 1;; esac; done

clean:
	rm -rf _build
