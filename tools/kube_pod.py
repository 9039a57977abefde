"""The Kubernetes CronJob's pod, as a YAML that ``podman kube play`` runs (make container-test).

    kubectl kustomize deploy/kubernetes > built.yaml
    python tools/kube_pod.py --image localhost/sftp-ipi:latest --from built.yaml \\
        --set SFTP_HOST=sftp --unset SFTP_KEY_FILE > pod.yaml
    python tools/kube_pod.py --image ... --secret sftp_credential=PATH --secret known_hosts=PATH > pod.yaml
    # with --podman-secrets DIR: each Secret goes to DIR/<name>.yaml for `podman secret create`

The input is what `kubectl apply -k deploy/kubernetes` would create (the kustomize
output), or, where kubectl is missing, the base's files plus a Secret made the way
the kustomization's secretGenerator makes it. The output keeps every object podman
can take unchanged: the claims, the ConfigMap (with --set/--unset applied: the test
server is not the shipped example's), the Secret, and the CronJob's
jobTemplate.spec.template as a Pod, with its security context, read-only root file
system, volumes and resources exactly as shipped.

What podman 4.3's `kube play` cannot take is listed in NOT_PLAYED (kinds and fields
it has no equivalent for); docs/deployment.md ("What is checked, and where") says the same.
"""

from __future__ import annotations

import argparse
import base64
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "deploy" / "kubernetes" / "base"
SERVER = REPO / "deploy" / "kubernetes" / "server"
SECRET_NAME = "sftp-ipi-credentials"  # noqa: S105 - the secretGenerator's object name, not a secret

# What `podman kube play` (Debian's podman 4.3) does not take, and what the test does instead.
NOT_PLAYED = {
    "CronJob": "kube play runs Pods and Deployments, not Jobs or CronJobs: the schedule, "
    "concurrencyPolicy, startingDeadlineSeconds and the history limits are Kubernetes' own; "
    "the test plays jobTemplate.spec.template as a Pod",
    "Job spec (backoffLimit, activeDeadlineSeconds, podFailurePolicy)": "no Job controller: "
    "one pod runs once, and its exit code is what podFailurePolicy would read",
    "Secret (kind)": "podman 4.3 stores it, but mounts each key of data (or stringData) "
    "still base64-encoded; --podman-secrets writes the Secret with its values as they are, "
    "for `podman secret create`, which the secret volume then mounts correctly",
    "secret volume without optional": "podman 4.3 dereferences the unset field and crashes "
    "(containers/podman#16636); the Pod says optional: false, Kubernetes' default",
    "secret volume defaultMode (0440)": "ignored: the files are root's, mode 0644",
    "securityContext.fsGroup, fsGroupChangePolicy": "ignored: a claim's volume takes the "
    "image's owner of its mount point (UID 10001), as the Dockerfile makes /data",
    "emptyDir": "mounted, but owned by root, mode 0755 (Kubernetes: 0777): only DECRYPT=gpg "
    "writes to /tmp, and the test does not decrypt",
    "terminationGracePeriodSeconds": "ignored: podman stops the container after 10 s",
    "PersistentVolumeClaim accessModes and storage requests": "each claim becomes a podman "
    "named volume of that name, without size or access mode",
    "automountServiceAccountToken, enableServiceLinks": "no service accounts or services to "
    "inject: nothing to turn off",
}


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def from_base(secrets: dict[str, Path]) -> list[dict[str, Any]]:
    """The objects of deploy/kubernetes without kustomize: the base, the server claim,
    and the credentials Secret from ``secrets`` (key -> file), as secretGenerator makes it."""
    docs = [d for name in ("pvc.yaml", "configmap.yaml", "cronjob.yaml") for d in _docs((BASE / name).read_text())]
    docs += _docs((SERVER / "pvc.yaml").read_text())
    data = {key: base64.b64encode(path.read_bytes()).decode() for key, path in secrets.items()}
    docs.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME}, "type": "Opaque", "data": data}
    )
    return docs


def pod_of(cronjob: dict[str, Any], image: str) -> dict[str, Any]:
    """The CronJob's pod template as a Pod named after the CronJob, every container on ``image``."""
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"]["template"])
    metadata = {"name": cronjob["metadata"]["name"], **template.get("metadata", {})}
    spec = template["spec"]
    for container in spec["containers"]:
        container["image"] = image
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            volume["secret"].setdefault("optional", False)  # see NOT_PLAYED
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's keys and their values as the mounted files must hold them."""
    values = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def podman_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """The Secret as podman 4.3 reads it back for a secret volume: the values under data, unencoded."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret["metadata"]["name"]},
        "type": secret.get("type", "Opaque"),
        "data": secret_values(secret),
    }


def playable(
    docs: list[dict[str, Any]], image: str, settings: dict[str, str], unset: list[str]
) -> list[dict[str, Any]]:
    """What podman kube play runs: claims, ConfigMaps (changed by ``settings`` and ``unset``),
    Secrets, and the one CronJob as its Pod; any other kind is an error (it would be dropped silently)."""
    out: list[dict[str, Any]] = []
    pods = []
    for doc in docs:
        kind = doc["kind"]
        if kind == "CronJob":
            pods.append(pod_of(doc, image))
        elif kind == "ConfigMap":
            changed = copy.deepcopy(doc)
            data = changed.setdefault("data", {})
            for key in unset:
                if key not in data:
                    raise SystemExit(f"kube_pod.py: --unset {key}: not in ConfigMap {doc['metadata']['name']}")
                del data[key]
            data.update(settings)
            out.append(changed)
        elif kind in ("PersistentVolumeClaim", "Secret"):
            out.append(doc)
        else:
            raise SystemExit(f"kube_pod.py: kind {kind} ({doc['metadata']['name']}): podman kube play cannot take it")
    if len(pods) != 1:
        raise SystemExit(f"kube_pod.py: expected one CronJob, found {len(pods)}")
    return out + pods


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="The CronJob's pod for podman kube play.")
    parser.add_argument("--image", required=True, help="the image every container runs")
    parser.add_argument("--from", dest="source", type=Path, help="kustomize output; default: the base files")
    parser.add_argument("--secret", action="append", default=[], help="KEY=FILE for the credentials Secret")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE in the ConfigMap")
    parser.add_argument("--unset", action="append", default=[], help="KEY to drop from the ConfigMap")
    parser.add_argument("--podman-secrets", type=Path, help="write each Secret here for podman secret create")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.set)
    if args.source is not None:
        if args.secret:
            parser.error("--secret is for the base files; kustomize output has its Secret")
        docs = _docs(args.source.read_text())
    else:
        secrets = {key: Path(path) for key, path in (item.split("=", 1) for item in args.secret)}
        docs = from_base(secrets)
    out = playable(docs, args.image, settings, args.unset)
    if args.podman_secrets is not None:
        args.podman_secrets.mkdir(parents=True, exist_ok=True)
        for secret in (d for d in out if d["kind"] == "Secret"):
            path = args.podman_secrets / f"{secret['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(podman_secret(secret), sort_keys=False))
        out = [d for d in out if d["kind"] != "Secret"]
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
