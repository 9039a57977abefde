# sftp-ipi: one run of the SFTP pull job per container start.
#
#   docker build -t sftp-ipi .
#   docker run --rm --env-file .env -v "$PWD/volumes/local:/data/local" ... sftp-ipi
#
# Dependencies come only from the hash-pinned lock files (`make lock` refreshes
# them), as binary wheels: nothing is compiled, and no build tool reaches the
# final image. No secret is ever copied in: credentials are mounted at run time
# (SFTP_PASS_FILE / SFTP_KEY_FILE) and .dockerignore keeps .env and volumes/ out
# of the build context.

# Any Debian-based image with `python` (3.11 or newer) on PATH and the venv module.
ARG BASE_IMAGE=python:3.13-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
# Two virtual environments: /opt/build holds the wheel builder (setuptools) and
# is left behind; /opt/venv is what the final image runs.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: -r requirements-build.lock \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-deps --no-index /tmp/wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes pip

FROM ${BASE_IMAGE}
# GnuPG for DECRYPT=gpg: the job drives gpg itself, in a private GNUPGHOME per run.
# Debian's own version of the base image's release, with its security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gnupg \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged UID/GID: file ownership on volumes is predictable, and
# Kubernetes can check runAsNonRoot against the numeric USER below.
RUN groupadd --gid 10001 sftp-ipi \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /home/sftp-ipi --create-home \
       --shell /usr/sbin/nologin sftp-ipi \
    && install -d -o 10001 -g 10001 -m 0700 /home/sftp-ipi/.ssh \
    && install -d -o 10001 -g 10001 -m 0750 /data /data/local /data/server /data/state /data/state/logs
COPY --from=build /opt/venv /opt/venv
# The root file system can be mounted read-only: the job writes only under
# /data (and to SFTP_KNOWN_HOSTS with SFTP_HOST_KEY_POLICY=accept-new; mount
# known_hosts, or a writable volume on /home/sftp-ipi/.ssh, for that).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/sftp-ipi \
    SFTP_KNOWN_HOSTS=/home/sftp-ipi/.ssh/known_hosts \
    LOCAL_DIR=/data/local \
    SERVER_DIR=/data/server \
    LAST_FILE_RECORD=/data/state/last_file.txt \
    LOG_FILE=/data/state/logs/sftp_transfer.log
VOLUME ["/data/local", "/data/server", "/data/state"]
WORKDIR /home/sftp-ipi
USER 10001:10001
# The job is PID 1 and needs no init: it handles SIGTERM and SIGINT itself
# (keeps the partial download, exits 143 / 130). Its only child processes are
# gpg's with DECRYPT=gpg. The gpg-agent they start is stopped at the end of the
# run, and stays a zombie (no memory, one per run) until the container exits.
ENTRYPOINT ["python", "-m", "app"]
