# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean browser-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/erf-demo --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The browser test drives Debian's chromium through chromedriver (no browser download);
# installed with apt-get when missing (as root, or through sudo), else the test skips with a message.
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver present"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver \
			|| echo "could not install chromium: the browser test will skip"; \
	else \
		echo "no apt-get: install chromium and chromedriver yourself; the browser test skips without them"; \
	fi

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/probe_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info
