# sftp-ipi: set-up, checks and demos. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SSHD := $(firstword $(wildcard /usr/sbin/sshd /usr/bin/sshd))
# Parallel test workers: one per core is what the 2-core CI machine handles best.
PYTEST_WORKERS ?= auto

.PHONY: help venv sshd test lint demo bench clean env-example lock compose-cli compose-config compose-keys container-test

# Hash-pinned dependency locks used by the container build; `make lock` refreshes them.
UV_VERSION ?= 0.13.9
HADOLINT := $(VENV)/bin/hadolint
DOCKERFILES := Dockerfile tests/containers/python/Dockerfile tests/containers/sftp/Dockerfile

help:
	@echo "make demo   - run the job against a private local sshd with sample IPI files"
	@echo "make test   - run the test suite against a real OpenSSH sshd"
	@echo "make lint   - ruff, mypy, bandit, hadolint, compose and Kubernetes checks, pip-audit"
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

# The tests and the demo start a private OpenSSH sshd; install it when missing.
# As root the tests also mount a small XFS to prove copy-on-write publishing, and
# push metrics to a real Prometheus Pushgateway.
sshd:
	@if [ "$$(id -u)" = 0 ] && { ! command -v mkfs.xfs >/dev/null || ! command -v prometheus-pushgateway >/dev/null; }; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			xfsprogs prometheus-pushgateway >/dev/null || true; \
	fi
	@if [ -z "$(SSHD)" ] && ! command -v sshd >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; \
		elif command -v sudo >/dev/null; then \
			sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; \
		else \
			echo "openssh-server is missing and cannot be installed without root" >&2; exit 1; \
		fi; \
	fi

test: venv sshd
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

lint: venv compose-cli
	$(PY) -m ruff check app tests tools
	$(PY) -m ruff format --check app tests tools
	$(PY) -m mypy
	$(PY) -m mypy tools/validate_k8s.py tools/audit_deps.py
	$(PY) -m bandit --quiet --configfile pyproject.toml --recursive app
	$(HADOLINT) --failure-threshold error $(DOCKERFILES)
	$(MAKE) --no-print-directory compose-config
	$(PY) tools/validate_k8s.py
	$(PY) tools/audit_deps.py

# Debian's docker-compose 1.29 validates docker-compose.yml without any engine.
compose-cli:
	@if ! command -v docker-compose >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
		elif command -v sudo >/dev/null; then \
			sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
		else \
			echo "docker-compose is missing and cannot be installed without root" >&2; exit 1; \
		fi; \
	fi

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

env-example: venv
	$(PY) tools/env_example.py > .env.example

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
