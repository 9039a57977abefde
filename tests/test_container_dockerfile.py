"""The Dockerfile and .dockerignore: non-root, no secrets, locked dependencies, and an
ENTRYPOINT that works as a plain process with the image's own ENV defaults."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Server, file_sha256, run_job

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
JOB_UID = "10001"


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            stages.append(Stage(base=rest.split()[0]))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(args=args, stages=stages)


def test_both_stages_build_from_a_slim_python_312_or_newer_by_default() -> None:
    df = parse_dockerfile()
    default = df.args["BASE_IMAGE"]
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", default)
    assert match and int(match.group(1)) >= 12, default
    assert [s.base.split(" ")[0] for s in df.stages] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert len(df.stages) == 2, "a build stage and a final stage"


def test_final_stage_runs_as_the_fixed_non_root_uid() -> None:
    final = parse_dockerfile().final
    users = final.all("USER")
    assert users == [f"{JOB_UID}:{JOB_UID}"], "numeric, so that runAsNonRoot can check it"
    run = " ".join(final.all("RUN"))
    assert f"--uid {JOB_UID}" in run and f"--gid {JOB_UID}" in run
    # USER comes after every RUN: nothing the image runs at start-up runs as root.
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


def test_entrypoint_env_defaults_and_volumes_are_the_documented_ones() -> None:
    final = parse_dockerfile().final
    assert [json.loads(e) for e in final.all("ENTRYPOINT")] == [["python", "-m", "app"]]
    assert final.all("CMD") == []
    env = final.env()
    assert env["LOCAL_DIR"] == "/data/local"
    assert env["SERVER_DIR"] == "/data/server"
    assert env["LAST_FILE_RECORD"] == "/data/state/last_file.txt"
    assert env["LOG_FILE"] == "/data/state/logs/sftp_transfer.log"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/home/sftp-ipi"
    assert env["SFTP_KNOWN_HOSTS"] == "/home/sftp-ipi/.ssh/known_hosts", "absolute: no reliance on ~ expansion"
    volumes = [v for args in final.all("VOLUME") for v in json.loads(args)]
    assert sorted(volumes) == ["/data/local", "/data/server", "/data/state"]
    # Everything the job writes (ledger, lock and log beside or under the record) is on a volume.
    for key in ("LAST_FILE_RECORD", "LOG_FILE"):
        assert any(env[key].startswith(v + "/") for v in volumes), key


def test_dependencies_come_only_from_the_hash_pinned_locks_as_wheels() -> None:
    build = parse_dockerfile().stages[0]
    runs = " && ".join(build.all("RUN"))
    installs = [part.strip() for part in runs.split("&&") if "pip install" in part]
    assert installs, "the build stage installs the dependencies"
    for command in installs:
        if "-r " in command:
            assert "--require-hashes" in command and "--only-binary=:all:" in command, command
            assert "--no-deps" in command, command
        else:
            # Only the project's own wheel, built in this stage, without any index.
            assert "--no-index" in command and "--no-deps" in command and "/tmp/wheels/" in command, command
    assert "-r requirements.lock" in runs and "-r requirements-build.lock" in runs
    assert "pip uninstall --yes pip" in runs, "the final venv carries no installer"


def test_final_stage_has_gnupg_for_decryption_and_no_apt_lists() -> None:
    runs = " && ".join(parse_dockerfile().final.all("RUN"))
    installs = [part.strip() for part in runs.split("&&") if "apt-get install" in part]
    assert installs == ["apt-get install --yes --no-install-recommends gnupg"]
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_no_secret_can_be_baked_into_the_image() -> None:
    df = parse_dockerfile()
    secretish = re.compile(r"PASS|SECRET|TOKEN|PASSPHRASE|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
    names = list(df.args)
    for stage in df.stages:
        names += list(stage.env())
        names += [a.partition("=")[0] for a in stage.all("ARG")]
    assert not [n for n in names if secretish.search(n)], "no ARG or ENV may carry a credential"
    allowed = {"requirements.lock", "requirements-build.lock", "pyproject.toml", "README.md", "app"}
    for stage in df.stages:
        assert stage.all("ADD") == [], "ADD can fetch URLs and unpack archives: COPY only"
        for args in stage.all("COPY"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if args.startswith("--from="):
                continue
            sources = words[:-1]
            assert set(sources) <= allowed, f"COPY {args}: only the files the build needs"
        for command in stage.all("RUN"):
            assert not re.search(r"id_(rsa|ecdsa|ed25519)|\.env\b|/run/secrets|sftp_password", command), command


# --- .dockerignore ---------------------------------------------------------------


def _dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions would need a fuller matcher here"
        regex = ""
        i = 0
        line = line.strip("/")
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex += line[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append(re.compile(regex))
    return patterns


def excluded_from_context(path: str) -> bool:
    """Docker's rule: a path is out if it, or any directory above it, matches a pattern."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in _dockerignore_patterns() for prefix in prefixes)


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "app/.env",
        "volumes/secrets/sftp_password",
        "volumes/secrets/sftp_users.conf",
        "volumes/sftp-host-keys/ssh_host_ed25519_key",
        "volumes/state/last_file.txt",
        "volumes/remote/20250426.IPI",
        "deploy/kubernetes/secrets/sftp_key",
        "id_ed25519",
        "keys/id_rsa.pub",
        "server.key",
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "app/__pycache__/job.cpython-311.pyc",
        ".mypy_cache/x",
        "last_file.txt",
    ],
)
def test_dockerignore_keeps_secrets_data_and_clutter_out_of_the_context(path: str) -> None:
    assert excluded_from_context(path)


def test_dockerignore_keeps_every_file_the_build_copies() -> None:
    needed = ["Dockerfile", "requirements.lock", "requirements-build.lock", "pyproject.toml", "README.md"]
    needed += [p.relative_to(REPO).as_posix() for p in (REPO / "app").glob("*.py")]
    assert [p for p in needed if excluded_from_context(p)] == []


# --- the ENTRYPOINT as a plain process ---------------------------------------------


def test_entrypoint_with_the_image_env_defaults_pulls_into_the_volumes(server: Server, tmp_path: Path) -> None:
    """Exactly what the image runs (`python -m app`, python being this interpreter), with the
    Dockerfile's ENV, its /data and HOME mapped onto temporary directories: the job must write
    nowhere but the three volumes, and must find known_hosts where the image says, under HOME."""
    final = parse_dockerfile().final
    assert [json.loads(e) for e in final.all("ENTRYPOINT")] == [["python", "-m", "app"]]
    root = tmp_path / "image-root"

    def mapped(value: str) -> str:
        return str(root) + value if value.startswith(("/data", "/home")) else value

    env = {k: mapped(v) for k, v in final.env().items() if k != "PATH"}
    home = Path(env["HOME"])
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(server.sshd.known_hosts_line())
    for volume in ("/data/local", "/data/server", "/data/state"):
        Path(mapped(volume)).mkdir(parents=True)
    data = server.put("20250426.IPI", b"ipi " * 50_000)
    settings = {
        **env,
        "SFTP_HOST": "127.0.0.1",
        "SFTP_PORT": str(server.port),
        "SFTP_USER": server.sshd.user,
        "SFTP_KEY_FILE": str(server.client_key),
        "SFTP_DIR": str(server.remote),
        "MIN_FILE_AGE": "0",
    }
    workdir = Path(mapped(final.all("WORKDIR")[-1]))
    before = {p for p in root.rglob("*")}

    result = run_job(settings, workdir)
    assert result.code == 0, result.output

    published = Path(mapped("/data/server")) / "20250426.IPI"
    assert file_sha256(published) == file_sha256(data)
    assert Path(mapped("/data/state/last_file.txt")).read_text().strip() == "20250426.IPI"
    assert Path(mapped("/data/state/logs/sftp_transfer.log")).is_file()
    assert (Path(mapped("/data/state")) / "completed_files.jsonl").is_file()
    written = {p for p in root.rglob("*")} - before
    volumes = [Path(mapped(v)) for v in ("/data/local", "/data/server", "/data/state")]
    outside = [p for p in written if not any(p.is_relative_to(v) for v in volumes)]
    assert outside == [], "with a read-only root file system only the volumes are writable"

    again = run_job(settings, workdir)
    assert again.code == 0, again.output
    assert "fetched 0 file(s)" in again.output
