# Two commands for a fresh machine (see README):
#   make demo   set up .venv and serve the Gradio demo on the embedded default model (http://127.0.0.1:7860)
#   make test   set up .venv and run the whole test suite
# and, for a one-shot answer in the terminal:
#   make generate PROMPT="Even or odd: 347"
# Both create the virtual environment from nothing when it is missing, and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROMPT ?= Even or odd: 347

.PHONY: setup demo generate test browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the chat demo on the embedded default model, watching the denoising step by step.
demo: $(STAMP)
	$(BIN)/llada demo $(DEMO_ARGS)

generate: $(STAMP)
	$(BIN)/llada generate --prompt "$(PROMPT)"

# Debian's Chromium for the browser test of the demo (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
