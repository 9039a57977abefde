"""deploy/kubernetes/: valid against the vendored Kubernetes schemas, and configured the
way the job needs to run safely as a CronJob."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_container_dockerfile import JOB_UID, parse_dockerfile

from app.config import load_settings, setting_docs
from app.errors import EXIT_AUTH, EXIT_CONFIG

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import validate_k8s  # noqa: E402


def objects() -> dict[str, dict[str, Any]]:
    """Every object of the kustomization by ``Kind/name``."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for _, d in validate_k8s.manifests()}


def cronjob() -> dict[str, Any]:
    return objects()["CronJob/sftp-ipi"]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (c,) = pod_spec()["containers"]
    assert isinstance(c, dict)
    return c


def config_map() -> dict[str, str]:
    name = container()["envFrom"][0]["configMapRef"]["name"]
    data: dict[str, str] = objects()[f"ConfigMap/{name}"]["data"]
    return data


def test_every_manifest_and_the_generated_secret_are_schema_valid() -> None:
    docs = [d for _, d in validate_k8s.manifests()] + validate_k8s.generated_secrets()
    assert {d["kind"] for d in docs} == {"CronJob", "PersistentVolumeClaim", "ConfigMap", "Secret"}
    for doc in docs:
        assert validate_k8s.validate(doc) == [], f"{doc['kind']} {doc['metadata']['name']}"
    assert validate_k8s.main() == 0


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "concurrencypolicy"), "Forbid"),  # misspelt field
        (("spec", "jobTemplate", "spec", "backoffLimit"), "two"),  # wrong type
        (("spec", "jobTemplate", "spec", "template", "spec", "securityContext", "readOnlyRootFilesystem"), True),
    ],
)
def test_the_schemas_are_strict_enough_to_catch_mistakes(path: tuple[str, ...], value: object) -> None:
    doc = copy.deepcopy(cronjob())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert validate_k8s.validate(doc) != []


def test_cronjob_never_overlaps_and_bounds_every_run() -> None:
    spec = cronjob()["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= 3600
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 0 <= job["backoffLimit"] <= 6
    assert job["activeDeadlineSeconds"] > 0
    rules = job["podFailurePolicy"]["rules"]
    fail_fast = [r for r in rules if r["action"] == "FailJob"]
    assert fail_fast[0]["onExitCodes"]["values"] == [EXIT_CONFIG, EXIT_AUTH]
    assert fail_fast[0]["onExitCodes"]["containerName"] == container()["name"]
    pod = pod_spec()
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs it; each retry is a fresh pod"
    # Enough time to stop at a consistent point after SIGTERM (the job needs a few seconds).
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_pod_is_locked_down() -> None:
    pod = pod_spec()
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == int(JOB_UID) and ctx["runAsGroup"] == int(JOB_UID)
    assert ctx["fsGroup"] == int(JOB_UID), "the volumes and the Secret become readable by the job"
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    c = container()["securityContext"]
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"]["drop"] == ["ALL"] and "add" not in c["capabilities"]
    assert c.get("privileged", False) is False


def test_resources_leave_room_over_the_measured_memory_bound() -> None:
    res = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind])

    def mib(q: str) -> int:
        assert q.endswith("Mi"), q
        return int(q[:-2])

    # The job's peak RSS target is 100 MiB whatever the file size.
    assert mib(res["requests"]["memory"]) >= 100
    assert mib(res["limits"]["memory"]) >= 2 * 100


def test_the_image_volumes_and_tmp_are_mounted_from_claims_and_memory() -> None:
    pod = pod_spec()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    image_volumes = {v for a in parse_dockerfile().final.all("VOLUME") for v in yaml.safe_load(a)}
    claims = {name.split("/", 1)[1] for name in objects() if name.startswith("PersistentVolumeClaim/")}
    for path in image_volumes:
        claim = volumes[mounted[path]]["persistentVolumeClaim"]["claimName"]
        assert claim in claims, path
    assert len(claims) == 3
    assert "emptyDir" in volumes[mounted["/tmp"]], "a writable /tmp under the read-only root"


def test_credentials_come_from_the_secret_as_files() -> None:
    pod = pod_spec()
    data = config_map()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    (secret_volume,) = [v for v in volumes.values() if "secret" in v]
    mount = mounts[secret_volume["name"]]
    assert mount["readOnly"] is True
    assert secret_volume["secret"]["defaultMode"] & 0o007 == 0, "not readable by others"
    (generator,) = validate_k8s.kustomization()["secretGenerator"]
    assert secret_volume["secret"]["secretName"] == generator["name"]
    keys = {entry.split("=", 1)[0] for entry in generator["files"]}
    for setting in ("SFTP_KEY_FILE", "SFTP_KNOWN_HOSTS"):
        path = Path(data[setting])
        assert path.parent == Path(mount["mountPath"]) and path.name in keys, setting
    for secret in ("SFTP_PASS", "SFTP_KEY_PASSPHRASE"):
        assert secret not in data, "secrets do not belong in a ConfigMap"
    for source in generator["files"]:
        assert source.split("=", 1)[1].startswith("secrets/")
    check = subprocess.run(["git", "check-ignore", "-q", "deploy/kubernetes/secrets/sftp_key"], cwd=REPO, check=False)
    assert check.returncode == 0, "the credentials folder is git-ignored"


def test_config_map_holds_valid_settings_with_json_logs_and_strict_host_keys(tmp_path: Path) -> None:
    data = config_map()
    known = {d.env for d in setting_docs()}
    assert set(data) <= known, f"unknown settings: {set(data) - known}"
    assert data["LOG_FORMAT"] == "json"
    assert data["SFTP_HOST_KEY_POLICY"] == "strict"
    # The ConfigMap plus the image's ENV load as valid settings (the key file mapped to a real file).
    key = tmp_path / "sftp_key"
    key.write_text("placeholder")
    env = {k: v for k, v in parse_dockerfile().final.env().items() if k != "PATH"}
    settings = load_settings({**env, **data, "SFTP_KEY_FILE": str(key)})
    assert settings.log_format == "json"


def test_kustomization_ties_the_files_together() -> None:
    kust = validate_k8s.kustomization()
    assert kust["kind"] == "Kustomization"
    listed = set(kust["resources"])
    on_disk = {p.name for p in (REPO / "deploy" / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    (image,) = kust["images"]
    assert image["name"] == container()["image"]
