# babelsip: `make run` serves examples/quickstart on 127.0.0.1:5060 (UDP+TCP),
# `make test` runs the whole suite, `make bench` compares against Kamailio.
# On a fresh Debian machine as root, missing system packages are installed
# with apt-get; elsewhere they are reported and the tests needing them skip.

SHELL := /bin/bash
# The venv's interpreter is also the one route workers run (README,
# Privileges): under a root server they are nobody, so it must be one nobody
# can run. `make venv` takes $(PYTHON) if nobody can run it, else Debian's
# /usr/bin/python3 (a python3 under a 0700 home, pyenv in /root, cannot be).
PYTHON ?= python3
WORKER_USER := nobody
# $(call as_worker,command): run it as the worker user (as root; else as is).
as_worker = if [ "$$(id -u)" = 0 ]; then setpriv --reuid=$(WORKER_USER) --regid=$$(id -gn $(WORKER_USER) 2>/dev/null || echo nogroup) --clear-groups $(1); else $(1); fi
VENV ?= .venv
PY := $(VENV)/bin/python
# Re-install only when the packaging changed (editable install: code changes
# need nothing).
STAMP := $(VENV)/.babelsip-installed
PACKAGING := pyproject.toml $(wildcard setup.py)

RUN_ARGS ?= --listen udp:127.0.0.1:5060 --listen tcp:127.0.0.1:5060 --routes examples/quickstart/routes
PYTEST_ARGS ?=
BENCH_ARGS ?=
# make fuzz: seconds per target, and where new inputs and crashes go.
FUZZ_SECONDS ?= 300
FUZZ_DIR ?= build/fuzz

# Debian packages the tests use, each with the check that says it is there.
TEST_DEBS := sip-tester perl libcpanel-json-xs-perl default-jdk-headless redis-server \
             baresip-core nftables conntrack iproute2 chromium npm openssl
have_sip-tester := command -v sipp
have_perl := command -v perl
have_libcpanel-json-xs-perl := perl -MCpanel::JSON::XS -e 1
have_default-jdk-headless := command -v javac
have_redis-server := command -v redis-server
have_kamailio := command -v kamailio || test -x /usr/sbin/kamailio
have_python3-venv := $(PYTHON) -c "import ensurepip, venv"

# $(call apt_ensure,package ...): install those whose check fails (root + apt only).
define apt_ensure
	@missing=""; \
	for pkg in $(1); do \
	  case $$pkg in \
	    sip-tester) check='$(have_sip-tester)';; \
	    perl) check='$(have_perl)';; \
	    libcpanel-json-xs-perl) check='$(have_libcpanel-json-xs-perl)';; \
	    default-jdk-headless) check='$(have_default-jdk-headless)';; \
	    redis-server) check='$(have_redis-server)';; \
	    baresip-core) check='command -v baresip';; \
	    nftables) check='command -v nft';; \
	    conntrack) check='command -v conntrack';; \
	    iproute2) check='command -v ip';; \
	    chromium) check='command -v chromium';; \
	    npm) check='command -v npm';; \
	    openssl) check='command -v openssl';; \
	    kamailio) check='$(have_kamailio)';; \
	    python3-venv) check='$(have_python3-venv)';; \
	    *) check=false;; \
	  esac; \
	  eval "$$check" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "apt-get install:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $$missing \
	    || { apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; }; \
	else \
	  echo "warning: missing system packages:$$missing (not root, or no apt-get); tests that need them will skip"; \
	fi
endef

.PHONY: run test fuzz bench venv deps test-deps worker-access bench-deps clean sdk-java-jar sdk-python-wheel

run: venv
	$(VENV)/bin/babelsip run $(RUN_ARGS)

test: venv test-deps worker-access
	$(PY) -m pytest -q -o faulthandler_timeout=300 $(PYTEST_ARGS)

# Coverage-guided fuzzing (tests/fuzz/run_fuzzer.py), FUZZ_SECONDS per target.
# A crash stops its target and leaves $(FUZZ_DIR)/<target>-crash-*: keep it in
# tests/sip/corpus with its fix (tests/fuzz/README.md).
fuzz: venv
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q -e '.[fuzz]'
	@status=0; for target in parser proxy; do \
	  mkdir -p $(FUZZ_DIR)/$$target; \
	  echo "fuzz $$target for $(FUZZ_SECONDS) s"; \
	  PYTHONPATH=$(CURDIR) $(PY) tests/fuzz/run_fuzzer.py $$target $(FUZZ_DIR)/$$target \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=$(FUZZ_DIR)/$$target- \
	    -print_final_stats=1 > $(FUZZ_DIR)/$$target.log 2>&1 || status=1; \
	  grep -v '^#\|^INFO: Instrumenting\|# Uses: \|dictionary. #' $(FUZZ_DIR)/$$target.log | tail -30; \
	done; exit $$status

bench: venv bench-deps
	$(PY) bench/run.py $(BENCH_ARGS)

venv: $(STAMP)

$(PY):
	$(call apt_ensure,python3-venv)
	@python=$$(command -v $(PYTHON)); \
	if ! ( $(call as_worker,"$$python" -c '') ) >/dev/null 2>&1; then \
	  echo "$$python: $(WORKER_USER) cannot run it (route workers do): using /usr/bin/python3"; \
	  python=/usr/bin/python3; \
	fi; \
	echo "$$python -m venv $(VENV)"; "$$python" -m venv $(VENV)

$(STAMP): $(PACKAGING) | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The browser SIP client of tests/e2e/test_jssip_chromium.py: JsSIP from npm,
# at the version pinned in tests/e2e/web/package-lock.json (node_modules is
# not committed). Without npm or the registry the test skips and says why.
WEB_DEPS := tests/e2e/web/node_modules/jssip/package.json

test-deps:
	$(call apt_ensure,$(TEST_DEBS))
	@if [ -x $(PY) ] && ! $(PY) -c "import atheris" 2>/dev/null; then \
	  $(PY) -m pip install -q 'atheris>=2.3' \
	    || echo "warning: atheris did not install: the fuzz smoke tests will skip"; \
	fi
	@if [ -f $(WEB_DEPS) ]; then exit 0; fi; \
	if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/e2e/web --no-audit --no-fund --loglevel=error \
	    || echo "warning: npm ci failed: the JsSIP browser test will skip"; \
	else \
	  echo "warning: npm missing: the JsSIP browser test will skip"; \
	fi

# Route workers run as $(WORKER_USER) in the tests too: they need this venv's
# interpreter and the checkout's sdk/ (a clone under a 0700 home cannot
# work). Without them the suite falls back to root route workers
# (tests/conftest.py) and says so: a warning here, not a failure.
worker-access: venv
	@export PYTHONPATH=$(CURDIR)/sdk/python; \
	if ! ( cd / && $(call as_worker,$(CURDIR)/$(PY) -c 'import babelsip_sdk.runner') ) >/dev/null 2>&1; then \
	  echo "warning: $(WORKER_USER) cannot run $(PY) with $(CURDIR)/sdk/python, as route workers must" \
	       "(README, Privileges): the tests keep route workers root. Clone where $(WORKER_USER) can" \
	       "read, or rm -r $(VENV) and make venv"; \
	fi

bench-deps:
	$(call apt_ensure,sip-tester kamailio)

deps: test-deps bench-deps

# The SDKs for logic hosts (sdk/*/README.md): the Java SDK as one jar
# (sdk/java/build/babelsip.jar, JDK only) and the Python SDK as a wheel
# (dist/babelsip_sdk-*.whl). The Perl SDK installs with its own
# `cd sdk/perl && perl Makefile.PL && make install`.
sdk-java-jar:
	$(MAKE) -C sdk/java jar

sdk-python-wheel: venv
	$(PY) -m pip wheel -q --no-deps -w dist sdk/python

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache bench/results sdk/java/build \
	  sdk/python/build sdk/python/*.egg-info
