# Two entry points (see README): `make demo` and `make test`. Both create .venv and install
# ccacodec into it first, so they work on a fresh machine with only python3 present.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := samples/seeding.png
DEMO := demo

.PHONY: install demo test clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/ccacodec encode $(SAMPLE) -o $(DEMO)/seeding.cca --quality 4
	$(BIN)/ccacodec info $(DEMO)/seeding.cca
	$(BIN)/ccacodec decode $(DEMO)/seeding.cca -o $(DEMO)/seeding.png
	$(BIN)/python -m cca_codec.metrics $(SAMPLE) $(DEMO)/seeding.png --cca $(DEMO)/seeding.cca

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) build *.egg-info
