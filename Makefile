# Two entry points (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MMGEN_THREADS ?= 2

.PHONY: install install-dev demo test e2e bench speech-corpus clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[app]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,app]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/mmgen generate --prompt "a small red circle on the left, blue background" --out out.png
	$(BIN)/mmgen generate --class 7 --batch 8 --out out_digit7.png
	$(BIN)/mmgen tts "the red dog follows a cat near the river" --out out.wav
	$(BIN)/mmgen info

test: install-dev
	$(BIN)/python -m pytest tests

# Real-browser test only (needs Debian's chromium: apt-get install -y chromium; .ci/run installs it).
e2e: install-dev
	MMGEN_UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest tests/test_e2e_browser.py

bench: install-dev
	$(BIN)/python benchmarks/bench_decode.py

# eSpeak NG speech corpus (needs apt-get install espeak-ng; audio extras come with install-dev).
speech-corpus: install-dev
	$(BIN)/python -m mmgen.audio.corpus --out data/speech --n 600 --seed 0

clean:
	rm -rf $(VENV) .pytest_cache out*.png out*.wav
