"""docker-compose.yml, .env.example and `make compose-keys` fit together: what `cp
.env.example .env; make compose-keys; docker compose run --rm downloader` relies on.
(`make lint` runs `docker-compose config -q`; `make container-test` runs it all for real.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from test_container_dockerfile import parse_dockerfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import validate_k8s

REPO = Path(__file__).resolve().parent.parent
JOB_UID = 10001


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def example() -> dict[str, str]:
    return {k: v for k, v in dotenv_values(REPO / ".env.example").items() if v is not None}


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``{container path: (host path, mode)}`` of a service's short-form bind mounts."""
    found = {}
    for entry in service.get("volumes", []):
        host, target, *mode = entry.split(":")
        found[target] = (host, mode[0] if mode else "rw")
    return found


def test_two_services_with_their_restart_policies() -> None:
    services = compose()["services"]
    assert set(services) == {"sftp", "downloader"}
    assert services["sftp"]["restart"] == "unless-stopped"
    # on-failure would repeat configuration and authentication failures; the job retries connections itself.
    assert services["downloader"]["restart"] == "no"


def test_downloader_is_locked_down_and_bounded_like_the_kubernetes_pod() -> None:
    down = compose()["services"]["downloader"]
    assert down["cap_drop"] == ["ALL"] and "cap_add" not in down
    assert down["security_opt"] == ["no-new-privileges:true"]
    assert "privileged" not in down
    (pod,) = [d for _, d in validate_k8s.manifests() if d["kind"] == "CronJob"]
    (container,) = pod["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and down["mem_limit"] == limit.removesuffix("Mi") + "m"
    assert 16 <= down["pids_limit"] <= 256, "room for the job's few threads, not for a fork bomb"


def test_test_server_image_is_pinned_to_a_tag_and_can_be_pinned_by_digest() -> None:
    image = compose()["services"]["sftp"]["image"]
    match = re.fullmatch(r"\$\{SFTP_TEST_IMAGE:-(.+)\}", image)
    assert match, "SFTP_TEST_IMAGE overrides it (a digest, or the container test's stand-in)"
    name, _, tag = match.group(1).rpartition(":")
    assert name == "docker.io/atmoz/sftp" and tag not in ("", "latest")
    assert re.search(r"atmoz/sftp:" + tag + r"@sha256:", (REPO / "docs" / "deployment.md").read_text()), (
        "docs/deployment.md shows a digest pin"
    )


def test_downloader_is_built_from_the_dockerfile_and_mounts_the_image_volumes() -> None:
    down = compose()["services"]["downloader"]
    assert down["build"]["context"] == "."
    default_base = parse_dockerfile().args["BASE_IMAGE"]
    assert down["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-" + default_base + "}"
    assert down["env_file"] == ".env"
    assert down["depends_on"] == ["sftp"], "no condition: the job's own retries ride out a late server"
    binds = mounts(down)
    volumes = {v for a in parse_dockerfile().final.all("VOLUME") for v in yaml.safe_load(a)}
    for volume in volumes:
        assert binds[volume] == ("./volumes/" + volume.rsplit("/", 1)[1], "rw")
    assert down["read_only"] is True and "/tmp" in down["tmpfs"]
    assert "user" not in down, "the image's own non-root UID"
    assert "init" not in down or down["init"] is False, "the job is a proper PID 1"


def test_env_example_works_with_the_compose_file_out_of_the_box() -> None:
    doc = compose()
    down = doc["services"]["downloader"]
    # The compose file's own environment wins over its env_file.
    env = example() | down["environment"]
    assert env["SFTP_HOST"] in doc["services"], "the server's compose service name"
    assert env.get("SFTP_PORT", "22") == "22"
    # The password is a compose secret, mounted where Docker mounts secrets.
    (secret,) = down["secrets"]
    assert env["SFTP_PASS_FILE"] == f"/run/secrets/{secret}"
    assert doc["secrets"][secret]["file"] == "./volumes/secrets/sftp_password"
    # known_hosts is mounted read-only from what `make compose-keys` writes.
    assert mounts(down)[env["SFTP_KNOWN_HOSTS"]] == ("./volumes/sftp-host-keys/known_hosts", "ro")
    assert env.get("SFTP_HOST_KEY_POLICY", "strict") == "strict"
    # The user and the directory the test server serves.
    sftp = doc["services"]["sftp"]
    served = mounts(sftp)
    home = f"/home/{env['SFTP_USER']}"
    assert served[home + env["SFTP_DIR"]] == ("./volumes/remote", "ro")
    assert home not in served, "atmoz/sftp needs a root-owned chroot home: mount into a subdirectory"
    keys = (REPO / "tools" / "compose_keys.sh").read_text()
    assert f"SFTP_USER={env['SFTP_USER']} " in keys


def test_test_server_host_keys_are_mounted_for_a_stable_fingerprint() -> None:
    sftp = compose()["services"]["sftp"]
    binds = mounts(sftp)
    for key_type in ("ed25519", "rsa"):
        target = f"/etc/ssh/ssh_host_{key_type}_key"
        assert binds[target] == (f"./volumes/sftp-host-keys/ssh_host_{key_type}_key", "ro")
    assert binds["/etc/sftp/users.conf"] == ("./volumes/secrets/sftp_users.conf", "ro")


def test_every_bind_mounted_folder_is_kept_in_git_and_its_contents_ignored() -> None:
    doc = compose()
    hosts = set()
    for service in doc["services"].values():
        hosts |= {h for h, _ in mounts(service).values()}
    hosts |= {s["file"] for s in doc["secrets"].values()}
    assert all(Path(h).parts[0] == "volumes" for h in hosts), "bind mounts come from volumes/ only"
    folders = {Path(h).parts[1] for h in hosts}
    assert folders <= {"local", "server", "state", "remote", "sftp-host-keys", "secrets"}
    for folder in folders:
        gitkeep = f"volumes/{folder}/.gitkeep"
        assert (REPO / gitkeep).is_file(), gitkeep
        ignored = subprocess.run(["git", "check-ignore", "-q", f"volumes/{folder}/anything"], cwd=REPO, check=False)
        assert ignored.returncode == 0, f"volumes/{folder}/ contents must be git-ignored"


# --- make compose-keys ---------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Path:
    if not (shutil.which("ssh-keygen") and shutil.which("openssl")):
        pytest.skip("needs ssh-keygen and openssl")
    (tmp_path / "tools").mkdir()
    shutil.copy(REPO / "tools" / "compose_keys.sh", tmp_path / "tools")
    subprocess.run(["bash", "tools/compose_keys.sh"], cwd=tmp_path, check=True, capture_output=True, text=True)
    return tmp_path


def test_compose_keys_makes_host_keys_known_hosts_password_and_samples(keyed: Path) -> None:
    v = keyed / "volumes"
    lines = [ln for ln in (v / "sftp-host-keys" / "known_hosts").read_text().splitlines() if not ln.startswith("#")]
    for key_type in ("ed25519", "rsa"):
        public = (v / "sftp-host-keys" / f"ssh_host_{key_type}_key.pub").read_text().split()
        assert f"sftp {public[0]} {public[1]}" in lines
        assert (v / "sftp-host-keys" / f"ssh_host_{key_type}_key").stat().st_mode & 0o077 == 0
    password = (v / "secrets" / "sftp_password").read_text().strip()
    assert len(password) >= 32
    (entry,) = (v / "secrets" / "sftp_users.conf").read_text().splitlines()
    user, crypted, flag, uid, gid = entry.split(":")
    assert (user, flag, uid, gid) == ("ipi", "e", str(JOB_UID), str(JOB_UID))
    salt = crypted.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password, capture_output=True, text=True, check=True
    )
    assert again.stdout.strip() == crypted, "users.conf holds the password, encrypted"
    assert password not in entry
    samples = sorted(v.joinpath("remote").glob("*.IPI"))
    assert len(samples) >= 2
    assert all(re.fullmatch(r"\d{8}\.IPI", p.name) for p in samples)
    assert all(time.time() - p.stat().st_mtime > 600 for p in samples), "older than MIN_FILE_AGE"
    if os.geteuid() == 0:
        for folder in ("local", "server", "state"):
            assert (v / folder).stat().st_uid == JOB_UID
        assert (v / "secrets" / "sftp_password").stat().st_uid == JOB_UID


def test_compose_keys_again_keeps_the_keys_and_the_password(keyed: Path) -> None:
    v = keyed / "volumes"
    kept = {p: p.read_bytes() for p in (v / "sftp-host-keys").iterdir()}
    kept[v / "secrets" / "sftp_password"] = (v / "secrets" / "sftp_password").read_bytes()
    subprocess.run(["bash", "tools/compose_keys.sh"], cwd=keyed, check=True, capture_output=True)
    assert {p: p.read_bytes() for p in kept} == kept
