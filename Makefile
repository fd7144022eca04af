# The two commands of README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JS := tests/interop/js
BOTS := tests/sandbox/bots
PYCORD_VENV := .venv-pycord

.PHONY: run test venv dev compiler npm system pycord lint typecheck pytest fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's metadata or the C media path changes (hatch_build.py builds
# voxgate._fastpath in place); editable, so Python source edits need nothing.
FASTPATH := src/voxgate/_fastpath.c hatch_build.py

$(VENV)/.installed: pyproject.toml $(FASTPATH) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(FASTPATH) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

venv: $(VENV)/.installed

dev: compiler $(VENV)/.installed-dev npm system pycord

# A C compiler and the OpenSSL headers, for voxgate._fastpath (the C media path) and the
# bench's C relay and load generator; without them the install still works, pure Python.
compiler:
	@command -v cc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev)
	@test -f /usr/include/openssl/evp.h || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libssl-dev)

# System programs the tests run: FFmpeg for the sandbox's discord.py music bot
# (discord.FFmpegOpusAudio runs the ffmpeg executable; voxgate itself needs none), and
# redis-server for the cluster tests (each starts its own on a free port; the packaged
# service on 6379 is not used), and Chromium with its chromedriver for the console's browser
# tests (Selenium is given the driver's path: nothing is downloaded at test time).
system:
	@command -v ffmpeg >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg)
	@command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver)

# The third-party JavaScript client the interop tests drive (@discordjs/voice), and the
# discord.js bots the sandbox tests run.
npm: $(JS)/node_modules/.package-lock.json $(BOTS)/node_modules/.package-lock.json

$(JS)/node_modules/.package-lock.json: $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(BOTS)/node_modules/.package-lock.json: $(BOTS)/package.json $(BOTS)/package-lock.json
	cd $(BOTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The third real client of the interop tests (py-cord), in a virtual environment of its
# own: py-cord and discord.py both install the `discord` package and must never share one.
pycord: $(PYCORD_VENV)/.installed

$(PYCORD_VENV)/.installed: tests/interop/pycord-requirements.txt
	test -x $(PYCORD_VENV)/bin/python || $(PYTHON) -m venv $(PYCORD_VENV)
	$(PYCORD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYCORD_VENV)/bin/python -m pip install --quiet -r tests/interop/pycord-requirements.txt
	touch $@

# One node on the defaults: wss on 127.0.0.1:8443, UDP on 8443, admin HTTP on 127.0.0.1:8444,
# state (secret, admin key, self-signed CA and certificate) in ./var, made on first run.
run: venv
	$(BIN)/voxgate serve --data-dir var $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests $(wildcard bench fuzz)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict src/voxgate/protocol src/voxgate/sandbox/model.py \
		src/voxgate/sandbox/gateway.py src/voxgate/server/dave.py src/voxgate/client/dave.py \
		src/voxgate/server/placement.py src/voxgate/server/fastpath.py

# Most of the suite waits on real-time audio and real clients, not on the CPU (a serial run
# is ~16 min wall for ~3.5 min of CPU): two workers, one test file each at a time, so a
# module's shared fixtures (one sandbox, one node) stay in one process and no two tests
# share a port. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 2
pytest: dev
	$(BIN)/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

test: dev lint typecheck pytest

# Every parser under atheris for FUZZ_SECONDS each (default 60); prints executions and crashes.
FUZZ_SECONDS ?= 60
fuzz: dev
	$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/python -m pip install --quiet atheris
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python fuzz/run.py

clean:
	rm -rf $(VENV) $(PYCORD_VENV) $(JS)/node_modules $(BOTS)/node_modules .pytest_cache .mypy_cache .ruff_cache
