# mediaserver: `make run` to try it, `make test` to check it. Both start from a fresh clone.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test bench install install-test system-test-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# Installs the package in place, compiling the Cython fast path.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# A local coturn (TURN for participants) starts with it when Debian's coturn is installed.
run: install
	$(BIN)/mediaserver serve --turn-local auto $(ARGS)

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

# Debian packages the tests use: PostgreSQL (store tests), Chromium (browser tests, driven by
# Playwright with executable_path), coturn (TURN), FFmpeg (composed archives, and ffprobe to
# read archives back), iproute2 and util-linux (a loopback-only network namespace).
# Installed only when missing.
system-test-deps:
	@need=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v pg_isready >/dev/null 2>&1 || need="$$need postgresql-client"; \
	command -v ip >/dev/null 2>&1 || need="$$need iproute2"; \
	command -v unshare >/dev/null 2>&1 || need="$$need util-linux"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	command -v turnserver >/dev/null 2>&1 || need="$$need coturn"; \
	command -v ffprobe >/dev/null 2>&1 || need="$$need ffmpeg"; \
	if [ -n "$$need" ]; then \
	  echo "installing Debian packages:$$need"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$need >/dev/null; \
	fi

# The suite runs in a network namespace that holds only loopback, so no test can
# send a packet anywhere else (see DESIGN.md, "Real peers in tests").
test: install-test system-test-deps
	@if unshare -n true 2>/dev/null; then NS="unshare -n"; \
	elif unshare -rn true 2>/dev/null; then NS="unshare -rn"; \
	else echo "error: cannot create a network namespace (unshare -n); run as root or enable user namespaces" >&2; exit 1; fi; \
	$$NS sh -c 'ip link set lo up && exec $(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)'

# Benchmarks 1 and 3 (loadtest/bench_fastpath.py), 2 (loadtest/bench_janus.py, which installs
# Debian's janus when run as root), 4 (loadtest/bench_sessions.py: what a session costs; loadtest/bench_floor.py:
# the least a join can do, beside it), 5
# (loadtest/bench_recovery.py: a session after its media worker or host dies), 6 (loadtest/bench_webinar.py:
# a session over two workers), 7 (loadtest/bench_join.py: join to first frame), the end-to-end
# encryption row (bench_fastpath --e2ee), the archiving row (bench_fastpath --archive), the adaptive-media
# row (bench_fastpath --adaptive: TWCC feedback and simulcast selection), the UDP GSO row
# (bench_fastpath --gso), sender threads (bench_fastpath --threads 1 2), receiving with io_uring
# (bench_fastpath --uring, which installs Debian's liburing-dev when run as root) and what
# an idle server costs (loadtest/bench_idle.py): figures on stdout, loopback only.
bench: install-test
	@if unshare -n true 2>/dev/null; then NS="unshare -n"; else NS="unshare -rn"; fi; \
	command -v janus >/dev/null || [ "$$(id -u)" != 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null; \
	[ -e /usr/include/liburing.h ] || [ "$$(id -u)" != 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liburing-dev >/dev/null; \
	$$NS sh -c 'ip link set lo up && $(BIN)/python -m loadtest.bench_fastpath $(ARGS) && $(BIN)/python -m loadtest.bench_fastpath --capacity $(ARGS) && $(BIN)/python -m loadtest.bench_janus && $(BIN)/python -m loadtest.bench_sessions && $(BIN)/python -m loadtest.bench_floor && $(BIN)/python -m loadtest.bench_recovery && $(BIN)/python -m loadtest.bench_webinar && $(BIN)/python -m loadtest.bench_join && $(BIN)/python -m loadtest.bench_fastpath --e2ee --fanout 10 50 && $(BIN)/python -m loadtest.bench_fastpath --archive --fanout 50 && $(BIN)/python -m loadtest.bench_fastpath --adaptive --fanout 10 50 && $(BIN)/python -m loadtest.bench_fastpath --gso && $(BIN)/python -m loadtest.bench_fastpath --threads 1 2 && $(BIN)/python -m loadtest.bench_fastpath --uring && $(BIN)/python -m loadtest.bench_idle'


clean:
	rm -rf build *.egg-info mediaserver/_fastpath.c* mediaserver/_fastpath*.so loadtest/_wire.c* loadtest/_wire*.so
