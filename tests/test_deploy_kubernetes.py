"""deploy/kubernetes/: valid against the vendored Kubernetes schemas, and configured the
way the job needs to run safely as a CronJob."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_container_dockerfile import JOB_UID, parse_dockerfile

from app.config import Settings, load_settings, setting_docs
from app.errors import EXIT_AUTH, EXIT_CONFIG, EXIT_LOCKED

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import validate_k8s  # noqa: E402

TWO_FEEDS = REPO / "deploy" / "kubernetes" / "examples" / "two-feeds"


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
    docs = [d for _, d in validate_k8s.manifests()]
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
    for folder in ("deploy/kubernetes", *(f"deploy/kubernetes/examples/two-feeds/{f}" for f in ("feed-a", "feed-b"))):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/secrets/sftp_credential"], cwd=REPO)
        assert ignored.returncode == 0, f"{folder}/secrets/ is git-ignored"


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
    # LOCAL_DIR is a claim of its own: the default (keep) would fill it with a second
    # copy of every delivered file.
    assert settings.local_retention == 7


def test_kustomizations_tie_every_file_together_and_every_reference_resolves() -> None:
    registry = validate_k8s._registry()
    for entry in validate_k8s.ENTRY_POINTS:
        count, problems = validate_k8s.check(entry, registry)
        assert count > 0 and problems == [], entry
    (image,) = validate_k8s.kustomization()["images"]
    assert container()["image"].startswith(image["newName"] + ":")
    base = validate_k8s.kustomization(REPO / "deploy" / "kubernetes" / "base")
    assert "image" not in str(base), "the image is chosen where the base is used"


def test_a_dangling_reference_is_reported() -> None:
    items = validate_k8s.build()
    (job,) = [i for i in items if i.key[0] == "CronJob"]
    (pod,) = validate_k8s.pod_specs(job.obj)
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    state["persistentVolumeClaim"]["claimName"] = "sftp-ipi-sate"
    assert validate_k8s.dangling_references(items) == [
        "CronJob sftp-ipi: PersistentVolumeClaim sftp-ipi-sate is not part of the build"
    ]


def test_exit_4_fails_the_job_at_once_instead_of_retrying_into_the_lock() -> None:
    rules = cronjob()["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    (locked,) = [r for r in rules if EXIT_LOCKED in r.get("onExitCodes", {}).get("values", [])]
    assert locked["action"] == "FailJob", "Ignore would start a new pod at once, again and again"
    assert locked["onExitCodes"] == {"containerName": container()["name"], "operator": "In", "values": [EXIT_LOCKED]}


def test_switching_from_key_to_password_is_one_edit(tmp_path: Path) -> None:
    text = (REPO / "deploy" / "kubernetes" / "base" / "configmap.yaml").read_text()
    assert sum(line.strip().startswith(("SFTP_KEY_FILE:", "SFTP_PASS_FILE:")) for line in text.splitlines()) == 1
    credential = tmp_path / "sftp_credential"
    credential.write_text("Wr1tten-by-the-operator\n")
    env = {k: v for k, v in parse_dockerfile().final.env().items() if k != "PATH"}

    def settings(configmap_text: str) -> Settings:
        data = yaml.safe_load(configmap_text)["data"]
        mount = Path(data["SFTP_KNOWN_HOSTS"]).parent
        return load_settings({**env, **{k: v.replace(str(mount), str(tmp_path)) for k, v in data.items()}})

    as_key = settings(text)
    as_password = settings(text.replace("  SFTP_KEY_FILE:", "  SFTP_PASS_FILE:"))

    assert as_key.sftp_key_file == credential and as_key.sftp_pass is None
    assert as_password.sftp_pass == "Wr1tten-by-the-operator" and as_password.sftp_key_file is None


def two_feeds() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for _, d in validate_k8s.manifests(TWO_FEEDS)}


def test_two_feeds_have_their_own_names_settings_credentials_and_state_and_share_server_dir(tmp_path: Path) -> None:
    built = two_feeds()
    jobs = {name: d for name, d in built.items() if name.startswith("CronJob/")}
    assert set(jobs) == {"CronJob/feed-a-sftp-ipi", "CronJob/feed-b-sftp-ipi"}
    mounts: dict[str, dict[str, str]] = {}
    for name, job in jobs.items():
        (pod,) = validate_k8s.pod_specs(job)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts[name] = {
            "local": volumes["local"]["persistentVolumeClaim"]["claimName"],
            "state": volumes["state"]["persistentVolumeClaim"]["claimName"],
            "server": volumes["server"]["persistentVolumeClaim"]["claimName"],
            "config": pod["containers"][0]["envFrom"][0]["configMapRef"]["name"],
            "secret": volumes["credentials"]["secret"]["secretName"],
        }
    a, b = mounts["CronJob/feed-a-sftp-ipi"], mounts["CronJob/feed-b-sftp-ipi"]
    for own in ("local", "state", "config", "secret"):
        assert a[own] != b[own], own
    assert a["server"] == b["server"] == "sftp-ipi-server"
    assert built["PersistentVolumeClaim/sftp-ipi-server"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert jobs["CronJob/feed-a-sftp-ipi"]["spec"]["schedule"] != jobs["CronJob/feed-b-sftp-ipi"]["spec"]["schedule"]
    # Each feed's settings load, with their own metrics instance; feed B logs in with a password.
    credential = tmp_path / "sftp_credential"
    credential.write_text("feed-b-password\n")
    env = {k: v for k, v in parse_dockerfile().final.env().items() if k != "PATH"}
    instances = set()
    for feed in (a, b):
        data = built[f"ConfigMap/{feed['config']}"]["data"]
        data = {k: v.replace("/run/secrets/sftp-ipi", str(tmp_path)) for k, v in data.items()}
        settings = load_settings({**env, **data})
        instances.add(settings.metrics_instance)
    assert instances == {"feed-a", "feed-b"}
    assert settings.sftp_pass == "feed-b-password" and settings.sftp_key_file is None


def normalized(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Objects by ``Kind/name``, generated Secrets without kustomize's content hash and their data."""
    hashed = re.compile(r"-[a-z0-9]{10}$")
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    unhash = {name: hashed.sub("", name) for name in secrets}
    result = {}
    for obj in copy.deepcopy(objects):
        if obj["kind"] == "Secret":
            obj["metadata"]["name"] = unhash[obj["metadata"]["name"]]
            obj["data"] = dict.fromkeys(obj["data"], "")
        for pod in validate_k8s.pod_specs(obj):
            for kind, mapping, key in validate_k8s.references(pod):
                if kind == "Secret":
                    mapping[key] = unhash.get(mapping[key], mapping[key])
        result[f"{obj['kind']}/{obj['metadata']['name']}"] = obj
    return result


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: nothing to compare with")
@pytest.mark.parametrize("digest", [False, True])
def test_the_builder_makes_what_kubectl_kustomize_makes(tmp_path: Path, digest: bool) -> None:
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    kube = tmp_path / "deploy" / "kubernetes"
    for secrets in kube.glob("**/secrets"):
        (secrets / "sftp_credential").write_text("credential")
        (secrets / "known_hosts").write_text("known hosts")
    if digest:
        day2 = tmp_path / "deploy" / "kubernetes-day2" / "kustomization.yaml"
        for kust in (kube / "kustomization.yaml", kube / "examples" / "two-feeds" / "kustomization.yaml", day2):
            pin = "    digest: sha256:" + "ab" * 32
            kust.write_text(re.sub(r"    # digest: .*", pin, kust.read_text()))
    for entry in validate_k8s.ENTRY_POINTS:
        copied = tmp_path / entry.relative_to(REPO)
        out = subprocess.run(["kubectl", "kustomize", str(copied)], capture_output=True, text=True, check=True).stdout
        theirs = normalized([d for d in yaml.safe_load_all(out) if d])
        ours = normalized([d for _, d in validate_k8s.manifests(copied)])
        assert ours == theirs, entry
        if digest:
            images = {c["image"] for o in ours.values() for p in validate_k8s.pod_specs(o) for c in p["containers"]}
            assert images == {"registry.example.com/sftp-ipi:0.1.0@sha256:" + "ab" * 32}


@pytest.mark.parametrize(
    ("kustomization", "refused"),
    [
        ("resources: [../base]\ncommonLabels: {team: ipi}\n", "commonLabels not implemented"),
        ("resources: [../base]\npatches:\n  - path: p.yaml\n", "merging the list volumeMounts not implemented"),
        ("resources: [../base]\npatches:\n  - path: p.yaml\n    target: {kind: CronJob}\n", "target"),
    ],
)
def test_the_builder_refuses_what_it_does_not_implement(tmp_path: Path, kustomization: str, refused: str) -> None:
    shutil.copytree(REPO / "deploy" / "kubernetes" / "base", tmp_path / "base")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(kustomization)
    container = {"name": "sftp-ipi", "volumeMounts": [{"name": "tmp", "mountPath": "/scratch"}]}
    patch = {"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [container]}}}}}}
    patch |= {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "sftp-ipi"}}
    (overlay / "p.yaml").write_text(yaml.safe_dump(patch))

    with pytest.raises(validate_k8s.KustomizeError, match=refused):
        validate_k8s.build(overlay)


def test_the_shipped_configmap_bounds_the_local_claim_with_local_retention() -> None:
    data = objects()["ConfigMap/sftp-ipi-config"]["data"]
    assert data.get("LOCAL_RETENTION") == "7", "keep (the default) would fill the local claim with a second copy"
    env = {k: v for k, v in parse_dockerfile().final.env().items() if k != "PATH"}
    loaded = load_settings({**env, **data, "SFTP_KEY_FILE": "", "SFTP_PASS": "x", "SFTP_KNOWN_HOSTS": ""})
    assert loaded.local_retention == 7


DAY2 = REPO / "deploy" / "kubernetes-day2"


def test_the_day2_pod_mounts_what_the_cronjobs_pod_mounts_and_waits_for_kubectl_exec() -> None:
    # The builder's output, which test_the_builder_makes_what_kubectl_kustomize_makes compares with kubectl's.
    built = {f"{d['kind']}/{d['metadata']['name']}": d for _, d in validate_k8s.manifests(DAY2)}
    assert set(built) - {"Pod/sftp-ipi-day2"} == set(objects()), "the feed's objects, unchanged, and the pod"
    pod = built["Pod/sftp-ipi-day2"]
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "sftp-ipi-day2"
    template = built["CronJob/sftp-ipi"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["spec"]["volumes"] == template["volumes"], "the feed's claims, Secret and /tmp"
    assert pod["spec"]["securityContext"] == template["securityContext"]
    (theirs,) = template["containers"]
    (ours,) = pod["spec"]["containers"]
    for key in ("envFrom", "volumeMounts", "securityContext"):
        assert ours[key] == theirs[key], key
    assert ours["image"] == "registry.example.com/sftp-ipi:0.1.0"
    assert ours["command"][0] == "python" and "sleep" in ours["command"][-1], "waits; kubectl exec runs commands"
    readme = (DAY2 / "kustomization.yaml").read_text()
    for command in ("status", "audit", "refetch", "skip"):
        assert f"kubectl exec sftp-ipi-day2 -- python -m app {command}" in readme
