# Two commands on a fresh machine:  `make book`  then  `make test`.
# Each target installs what it needs into a local virtual environment (.venv).

PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
# The venv's bin first: nbgrader starts `alembic`, jupyter-book starts kernels.
export PATH := $(BIN):$(PATH)
export JUPYTER_PREFER_ENV_PATH := 1
# Exact pins where we have them for this Python (CI: 3.11), the pyproject ranges elsewhere.
PYVER := $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
CONSTRAINTS := $(wildcard requirements/constraints-py$(PYVER).txt)
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: help book runs pdf test pin notebooks solutions exercises gradescope grade preview system-deps clean clean-book

help:
	@echo "make book       build the book into _build/html (installs what it needs)"
	@echo "make runs       train every run the chapters read from nothing (~14 min) and ship them in trained/"
	@echo "make pdf        build the whole book as one PDF, _build/pdf/book.pdf (XeLaTeX; installs TeX as root)"
	@echo "make test       run the whole test suite (builds the book first)"
	@echo "make pin        record the last commit of the student package as what notebooks install"
	@echo "make notebooks  regenerate the Colab notebooks paired with the chapters"
	@echo "make solutions  regenerate the nbgrader source notebooks (solutions/) from the library"
	@echo "make exercises  regenerate the student notebooks (exercises/) with nbgrader"
	@echo "make gradescope build Gradescope autograder zips into _build/gradescope/"
	@echo "make grade SUBMISSIONS=path  grade notebooks (or an nbgrader submitted/ folder) into grades/"
	@echo "                  (dates, late policy and extensions from course.toml when it exists; GRADE_FLAGS='...')"
	@echo "make preview    serve _build/html on http://localhost:8000"
	@echo "make clean      remove _build and the virtual environment"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when the dependency lists change.
$(VENV)/.book-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e ".[book]"
	@touch $@

# Grading needs neither the book's toolchain nor a browser.
$(VENV)/.grade-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) -e ".[grade]"
	@touch $@

$(VENV)/.test-installed: $(VENV)/.book-installed pyproject.toml $(CONSTRAINTS)
	$(PIP) -e ".[book,grade,test]"
	@touch $@

# The browser tests' axe-core, pinned exactly in package-lock.json (Node and npm, no browser).
node_modules/.npm-installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

# Chapters execute BOOK_JOBS at a time (default: one per core) into MyST-NB's cache, each
# kernel on one thread; the Sphinx build then reads them. BOOK_JOBS=1: one after the other.
# With Node on PATH (tools/system_deps.sh installs it for `make test`) the maths is typeset
# into the pages as they are written (tools/site_maths.py); without it, in the reader's browser.
BOOK_JOBS ?=
book: $(VENV)/.book-installed
	$(BIN)/python -m tools.execute_book $(if $(BOOK_JOBS),--jobs $(BOOK_JOBS))
	OMP_NUM_THREADS=1 $(BIN)/jupyter-book build -n -W --keep-going .
	@echo
	@echo "The book is at file://$(CURDIR)/_build/html/index.html  (or run: make preview)"

# Train every run the chapters read, from nothing (about 14 minutes on two cores), ship the results
# in trained/ (tools/trained.py) and build the book from them. After a change to the training code
# the build trains what trained/ lacks, and tests/test_trained.py fails until this has run.
runs: $(VENV)/.book-installed
	rm -rf _build/.jupyter_cache _build/models _build/runs-fresh
	TINYLLM_CACHE=$(CURDIR)/_build/runs-fresh $(BIN)/python -m tools.execute_book --no-shipped $(if $(BOOK_JOBS),--jobs $(BOOK_JOBS))
	$(BIN)/python -m tools.trained ship _build/runs-fresh
	mv _build/runs-fresh _build/models
	$(MAKE) book

# The whole book as one PDF: the chapters executed as for `make book` (the same cache; the LaTeX
# build refuses to execute one itself, tools/sphinx_print.py), Sphinx's LaTeX builder, then XeLaTeX.
PDF := _build/pdf/book.pdf
pdf: $(VENV)/.book-installed
	@tools/system_deps.sh pdf
	$(BIN)/python -m tools.execute_book $(if $(BOOK_JOBS),--jobs $(BOOK_JOBS))
	OMP_NUM_THREADS=1 $(BIN)/python -m tools.sphinx_print --builder latex -n -W --keep-going .
	$(MAKE) -C _build/latex all-pdf LATEXMKOPTS="-silent -halt-on-error"
	@mkdir -p $(dir $(PDF)) && cp _build/latex/book.pdf $(PDF)
	@echo
	@echo "The PDF is at $(CURDIR)/$(PDF)"

# The notebooks quote the values the build computed: build first (incremental, cached).
# After a commit that changes the student package (tinyllm/, autograder/, pyproject.toml):
# record it as what the notebooks install, commit _config.yml, then `make notebooks exercises`.
pin:
	$(BIN)/python -m tools.bookconfig pin

notebooks: book
	$(BIN)/python -m tools.notebooks write

solutions: $(VENV)/.test-installed
	$(BIN)/python -m tools.exercises write

exercises: solutions
	$(BIN)/python -m tools.exercises release

gradescope: $(VENV)/.test-installed
	@tools/system_deps.sh grade
	$(BIN)/python -m autograder.gradescope build _build/gradescope

# Everything an instructor needs from one command: reports, grades.csv, feedback/, the class
# summary and similarity report per assignment, and the gradebook's scores when there is one.
# The course file (due dates, late policy, extensions: docs/instructor.md) when there is one.
SUBMISSIONS ?= submitted
GRADEBOOK ?= $(wildcard gradebook.db)
COURSE ?= $(wildcard course.toml)
GRADE_FLAGS ?=
grade: $(VENV)/.grade-installed
	@tools/system_deps.sh grade
	$(BIN)/python -m autograder grade $(SUBMISSIONS) --out grades $(if $(COURSE),--course $(COURSE)) $(if $(GRADEBOOK),--gradebook $(GRADEBOOK)) $(GRADE_FLAGS)

preview:
	@echo "Serving _build/html on http://localhost:8000 (Ctrl-C stops)"
	$(BIN)/python -m http.server --directory _build/html 8000

# System packages the tests need (bubblewrap for the grader's sandbox).
system-deps:
	@tools/system_deps.sh

# TEST_JOBS test processes (pytest-xdist; default one per core), each test file in one of them so
# that a file's shared fixtures (a graded class, a browser) are built once; torch on one thread in
# each, so the processes do not fight over the cores. TEST_JOBS=0: one process. The slowest tests
# are listed at the end.
TEST_JOBS ?= auto
TEST_DURATIONS ?= 15
# Tests marked `alone` (Lighthouse's timings) run afterwards with the machine to themselves: a
# score read from a trace's task times would otherwise measure the test running beside it.
test: $(VENV)/.test-installed system-deps node_modules/.npm-installed book
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile --durations=$(TEST_DURATIONS) -m "not alone"; \
	parallel=$$?; OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m alone -p no:xdist; alone=$$?; \
	test $$parallel -eq 0 -a $$alone -eq 0

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV)
