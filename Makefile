# Two entry points (see README): `make demo` and `make test`. Both create .venv and install
# ccacodec into it first, so they work on a fresh machine with only python3 present.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := samples/seeding.png
DEMO := demo

# Optional: Debian's command-line codecs that `ccacodec eval --compare` and `ccacodec bench` run
# (cwebp/dwebp, cjxl/djxl, avifenc/avifdec, heif-enc/heif-convert). Uses sudo unless run as root.
CODEC_PACKAGES := webp libjxl-tools libavif-bin libheif-examples
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test codecs clean

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
	$(BIN)/python -m cca_codec.image.metrics $(SAMPLE) $(DEMO)/seeding.png --cca $(DEMO)/seeding.cca

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

codecs:
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y $(CODEC_PACKAGES)

clean:
	rm -rf $(DEMO) build *.egg-info
