# sftp-ipi: set-up, checks and demos. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Parallel test workers: one per core is what the 2-core CI machine handles best.
PYTEST_WORKERS ?= auto

.PHONY: help venv sshd test-deps lint-deps systemd-cli test lint demo bench clean env-example config-doc lock compose-cli compose-config compose-keys container-test

# Hash-pinned dependency locks used by the container build; `make lock` refreshes them.
UV_VERSION ?= 0.13.9
HADOLINT := $(VENV)/bin/hadolint
DOCKERFILES := Dockerfile tests/containers/python/Dockerfile tests/containers/sftp/Dockerfile

help:
	@echo "make demo   - run the job against a private local sshd with sample IPI files"
	@echo "make test   - run the test suite against a real OpenSSH sshd"
	@echo "make lint   - ruff, mypy, bandit, hadolint, compose and Kubernetes checks, pip-audit"
	@echo "make check-rules - promtool check and unit tests of the alert rules; generated PrometheusRule and dashboard"
	@echo "make bench  - throughput and memory benchmarks"
	@echo "make container-test - build the image and run the Compose project for real (root, podman)"
	@echo "make compose-keys   - one-time set-up for docker-compose.yml's test SFTP server"
	@echo "make lock   - refresh the hash-pinned lock files from pyproject.toml"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian packages, installed only by the targets that use them (as root, or via sudo).
# $(call apt-need,COMMAND,PACKAGES): install PACKAGES when COMMAND is missing; fail without root.
define apt-need
	@if ! command -v $(1) >/dev/null && [ ! -x /usr/sbin/$(1) ]; then \
		if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
		else echo "$(1) is missing: install the Debian package(s) $(2) (needs root)" >&2; exit 1; fi; \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	fi
endef
# $(call apt-want,COMMAND,PACKAGES): the same for optional tools, as root only; the tests
# that need them skip (saying so) where they are missing.
define apt-want
	@if [ "$$(id -u)" = 0 ] && ! command -v $(1) >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $(2) >/dev/null || true; \
	fi
endef

# The demo, the benchmarks and the tests start a private OpenSSH sshd.
sshd:
	$(call apt-need,sshd,openssh-server)

# The tests also need, as root: a small XFS to prove copy-on-write publishing
# (mkfs.xfs), a real Prometheus Pushgateway to push metrics to, and a real
# Prometheus that scrapes it and evaluates the alert rules end to end; and ProFTPD's
# mod_sftp, a server that computes file digests (check-file-handle); tinyproxy (HTTP
# CONNECT) and microsocks (SOCKS5) for the network-path tests.
# Tools for further tests go here, one line each.
test-deps: sshd
	$(call apt-want,mkfs.xfs,xfsprogs)
	$(call apt-want,prometheus-pushgateway,prometheus-pushgateway)
	$(call apt-want,prometheus,prometheus)
	$(call apt-want,proftpd,proftpd-core proftpd-mod-crypto)
	$(call apt-want,tinyproxy,tinyproxy)
	$(call apt-want,microsocks,microsocks)

test: venv test-deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

# `make lint` checks the deployment files without a container engine, a cluster or
# a running systemd: docker-compose (compose-cli) and systemd-analyze (systemd-cli).
# Linters for further files go here, one line each.
lint-deps: compose-cli systemd-cli

lint: venv lint-deps
	$(PY) -m ruff check app tests tools
	$(PY) -m ruff format --check app tests tools
	$(PY) -m mypy
	$(PY) -m mypy tools/validate_k8s.py tools/audit_deps.py tools/verify_schedules.py tools/prometheus_rule.py \
		tools/grafana_dashboard.py tools/config_doc.py tools/kube_pod.py
	$(PY) -m bandit --quiet --configfile pyproject.toml --recursive app
	PY=$(PY) bash tools/check_rules.sh
	$(HADOLINT) --failure-threshold error $(DOCKERFILES)
	$(MAKE) --no-print-directory compose-config
	$(PY) tools/validate_k8s.py
	$(PY) tools/verify_schedules.py
	$(PY) tools/audit_deps.py

# Alert rules (promtool check + unit tests) and the files generated from them; make lint runs it too.
.PHONY: check-rules
check-rules: venv
	PY=$(PY) bash tools/check_rules.sh

# Debian's docker-compose 1.29 validates docker-compose.yml without any engine.
compose-cli:
	$(call apt-need,docker-compose,docker-compose)

# systemd-analyze verifies deploy/systemd/ offline (the Debian package `systemd`).
systemd-cli:
	$(call apt-need,systemd-analyze,systemd)

# Checked as an operator starts: with .env copied from .env.example.
compose-config: compose-cli
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		cp docker-compose.yml "$$tmp/" && cp .env.example "$$tmp/.env" && \
		cd "$$tmp" && docker-compose config -q && echo "docker-compose.yml: valid (docker-compose config)"

demo: venv sshd
	$(PY) tools/demo.py

bench: venv sshd
	@# rclone and lftp are the catch-up scenarios' peers (Debian packages).
	@if [ "$$(id -u)" = 0 ] && { ! command -v rclone >/dev/null || ! command -v lftp >/dev/null; }; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			rclone lftp >/dev/null; \
	fi
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# .env.example and docs/configuration.md's reference, both from app/config.py's Settings.
env-example: venv config-doc
	$(PY) tools/env_example.py > .env.example

config-doc: venv
	$(PY) tools/config_doc.py

lock: venv
	$(PY) -m pip install --quiet 'uv==$(UV_VERSION)'
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --upgrade \
		--quiet --custom-compile-command 'make lock' -o requirements.lock
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
		| $(VENV)/bin/uv pip compile - --universal --python-version 3.11 --generate-hashes --upgrade \
		--quiet --custom-compile-command 'make lock' -o requirements-build.lock

compose-keys:
	bash tools/compose_keys.sh

container-test:
	bash tools/container_test.sh
