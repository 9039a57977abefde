"""tools/kube_pod.py: the CronJob's pod that make container-test plays with podman kube play is
the shipped pod template, unchanged but for the image and what podman 4.3 needs spelt out."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import kube_pod  # noqa: E402

IMAGE = "localhost/sftp-ipi:latest"
PASSWORD = "pässword with spaces\n"
KNOWN_HOSTS = "sftp ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\nsftp ssh-rsa AAAAB3Example\n"


def _secrets(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "sftp_credential").write_text(PASSWORD)
    (tmp_path / "known_hosts").write_text(KNOWN_HOSTS)
    return {"sftp_credential": tmp_path / "sftp_credential", "known_hosts": tmp_path / "known_hosts"}


def _kustomized(tmp_path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    tree = tmp_path / "kubernetes"
    shutil.copytree(REPO / "deploy" / "kubernetes", tree)
    shutil.copy(tmp_path / "sftp_credential", tree / "secrets" / "sftp_credential")
    shutil.copy(tmp_path / "known_hosts", tree / "secrets" / "known_hosts")
    built = subprocess.run([kubectl, "kustomize", str(tree)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def _shipped_template() -> dict[str, Any]:
    cronjob = yaml.safe_load((REPO / "deploy" / "kubernetes" / "base" / "cronjob.yaml").read_text())
    return dict(cronjob["spec"]["jobTemplate"]["spec"]["template"])


@pytest.mark.parametrize("source", ["kustomize", "base"])
def test_the_pod_is_the_cronjobs_template_with_the_image_and_an_explicit_optional(tmp_path: Path, source: str) -> None:
    secrets = _secrets(tmp_path)
    docs = _kustomized(tmp_path) if source == "kustomize" else kube_pod.from_base(secrets)

    out = kube_pod.playable(docs, IMAGE, {"SFTP_HOST": "sftp"}, ["SFTP_KEY_FILE"])

    assert [d["kind"] for d in out].count("Pod") == 1 and out[-1]["kind"] == "Pod"
    assert sorted(d["kind"] for d in out[:-1]) == ["ConfigMap"] + ["PersistentVolumeClaim"] * 3 + ["Secret"]
    pod = out[-1]
    assert pod["metadata"]["name"] == "sftp-ipi"
    expected = copy.deepcopy(_shipped_template()["spec"])
    [secret] = [d for d in out if d["kind"] == "Secret"]
    for volume in expected["volumes"]:
        if "secret" in volume:
            volume["secret"]["optional"] = False
            volume["secret"]["secretName"] = secret["metadata"]["name"]  # kustomize's hashed name
    for container in expected["containers"]:
        container["image"] = IMAGE
    assert pod["spec"] == expected
    [config] = [d for d in out if d["kind"] == "ConfigMap"]
    assert config["data"]["SFTP_HOST"] == "sftp" and "SFTP_KEY_FILE" not in config["data"]
    assert config["data"]["LOCAL_RETENTION"] == "7"  # the rest as shipped

    # What podman 4.3 mounts for a secret volume: the values as they are, not base64.
    assert kube_pod.podman_secret(secret)["data"] == {"sftp_credential": PASSWORD, "known_hosts": KNOWN_HOSTS}


def test_the_cli_writes_the_podman_secrets_apart_and_plays_the_rest(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "kube_pod.py"),
            "--image",
            IMAGE,
            *(f"--secret={k}={v}" for k, v in secrets.items()),
            "--podman-secrets",
            str(tmp_path / "secrets"),
            "--unset",
            "SFTP_KEY_FILE",
            "--set",
            "SFTP_PASS_FILE=/run/secrets/sftp-ipi/sftp_credential",
        ],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert "Secret" not in kinds and kinds[-1] == "Pod"
    written = yaml.safe_load((tmp_path / "secrets" / f"{kube_pod.SECRET_NAME}.yaml").read_text())
    assert written["data"]["sftp_credential"] == PASSWORD


@pytest.mark.parametrize(
    ("extra", "unset", "message"),
    [
        ({"kind": "Deployment", "metadata": {"name": "x"}}, [], "kind Deployment"),
        (None, ["NO_SUCH_SETTING"], "--unset NO_SUCH_SETTING"),
    ],
)
def test_what_podman_would_drop_or_a_wrong_setting_is_an_error(
    tmp_path: Path, extra: dict[str, Any] | None, unset: list[str], message: str
) -> None:
    docs = kube_pod.from_base(_secrets(tmp_path)) + ([extra] if extra else [])
    with pytest.raises(SystemExit, match=message):
        kube_pod.playable(docs, IMAGE, {}, unset)
