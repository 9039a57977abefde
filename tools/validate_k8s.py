"""Build and validate deploy/kubernetes/ against the vendored Kubernetes JSON schemas (``make lint``).

Each kustomization an operator applies (ENTRY_POINTS) is built the way
``kubectl kustomize`` builds it, and every object of the result, generated
Secrets included, is checked against the strict schema of its kind (unknown or
misplaced fields are errors); every ConfigMap, Secret and claim a pod refers to
must be part of the same build. Works offline and without kubectl: the schemas
live in deploy/kubernetes/schemas/, and the build is done here.

The builder implements only the kustomize features these files use, the way
kustomize v5 does (tests/test_deploy_kubernetes.py compares its output with
``kubectl kustomize`` where kubectl is installed), and rejects any other field:
``resources`` (files and directories), ``secretGenerator`` (files and literals;
behavior create, replace, merge), ``patches`` (strategic merge, by the patch's
own kind and name; ``$patch: delete``; ``null`` removes a key; lists of named
items merged by name where Kubernetes does), ``namePrefix`` (with references
renamed), ``namespace`` and ``images``. The generated Secrets hold placeholder
data (the credential files are not in git), and their names carry no content
hash.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "deploy" / "kubernetes"
SCHEMA_DIR = KUBE / "schemas" / "v1.33.0-local-strict"
# What an operator runs `kubectl apply -k` on: one feed, the two-feed example, the day-2 pod.
ENTRY_POINTS = (KUBE, KUBE / "examples" / "two-feeds", REPO / "deploy" / "kubernetes-day2")

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namePrefix", "namespace", "patches", "secretGenerator"}
SUPPORTED_FIELDS |= {"images"}
# Lists that a strategic merge patch merges item by item on the item's name
# (their patchMergeKey in the Kubernetes API); any other list of objects in a
# patch is refused rather than guessed at.
MERGED_BY_NAME = {"containers", "initContainers", "volumes", "env"}


class KustomizeError(ValueError):
    """A kustomization this builder cannot build faithfully, or a broken one."""


@dataclass
class Built:
    """One object of a build and where it comes from (a file, or a generator)."""

    origin: str
    obj: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return str(self.obj.get("kind")), str(self.obj.get("metadata", {}).get("name"))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{path}: a document is not a mapping")
    return docs


def kustomization(directory: Path = KUBE) -> dict[str, Any]:
    (doc,) = load_yaml_documents(directory / "kustomization.yaml")
    return doc


def _relative(path: Path) -> str:
    resolved = path.resolve()
    return resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else str(resolved)


# --- the build ------------------------------------------------------------------------


def build(directory: Path = KUBE, used: set[Path] | None = None) -> list[Built]:
    """The objects ``kubectl kustomize directory`` makes, in our subset; ``used`` collects the files read."""
    used = used if used is not None else set()
    kust = kustomization(directory)
    where = _relative(directory / "kustomization.yaml")
    unsupported = sorted(set(kust) - SUPPORTED_FIELDS)
    if unsupported:
        raise KustomizeError(f"{where}: {', '.join(unsupported)} not implemented by tools/validate_k8s.py")
    used.add((directory / "kustomization.yaml").resolve())
    items: list[Built] = []
    for entry in kust.get("resources", []):
        path = directory / entry
        if path.is_dir():
            items += build(path, used)
        elif path.is_file():
            used.add(path.resolve())
            items += [Built(_relative(path), doc) for doc in load_yaml_documents(path)]
        else:
            raise KustomizeError(f"{where}: resource {entry} does not exist")
    for generator in kust.get("secretGenerator", []):
        _generate_secret(items, generator, where)
    for patch in kust.get("patches", []):
        _apply_patch(items, directory, patch, where, used)
    if "namePrefix" in kust:
        _prefix(items, str(kust["namePrefix"]))
    if "namespace" in kust:
        for item in items:
            item.obj.setdefault("metadata", {})["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        _set_image(items, image)
    return items


def _find(items: list[Built], kind: str, name: str) -> Built | None:
    return next((i for i in items if i.key == (kind, name)), None)


def _generate_secret(items: list[Built], generator: dict[str, Any], where: str) -> None:
    unknown = set(generator) - {"name", "type", "files", "literals", "behavior"}
    if unknown:
        raise KustomizeError(f"{where}: secretGenerator {', '.join(sorted(unknown))} not implemented")
    keys = [entry.split("=", 1)[0] for entry in generator.get("files", [])]
    keys += [entry.split("=", 1)[0] for entry in generator.get("literals", [])]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": generator["name"]},
        "type": generator.get("type", "Opaque"),
        "data": dict.fromkeys(keys, ""),
    }
    behavior = generator.get("behavior", "create")
    existing = _find(items, "Secret", generator["name"])
    if behavior == "create":
        if existing is not None:
            raise KustomizeError(f"{where}: Secret {generator['name']} exists already (behavior: replace or merge)")
        items.append(Built(f"{where} secretGenerator", secret))
    elif existing is None:
        raise KustomizeError(f"{where}: secretGenerator behavior {behavior}: no Secret {generator['name']} to change")
    elif behavior == "replace":
        existing.obj, existing.origin = secret, f"{where} secretGenerator"
    else:
        existing.obj.setdefault("data", {}).update(secret["data"])


def _apply_patch(items: list[Built], directory: Path, patch: dict[str, Any], where: str, used: set[Path]) -> None:
    if set(patch) == {"path"}:
        path = directory / patch["path"]
        used.add(path.resolve())
        docs = load_yaml_documents(path)
    elif set(patch) == {"patch"}:
        docs = [d for d in yaml.safe_load_all(patch["patch"]) if d is not None]
    else:
        raise KustomizeError(f"{where}: patches with {', '.join(sorted(patch))} not implemented (only path or patch)")
    for doc in docs:
        kind, name = str(doc.get("kind")), str(doc.get("metadata", {}).get("name"))
        target = _find(items, kind, name)
        if target is None:
            raise KustomizeError(f"{where}: patch for {kind} {name}, which is not in the build")
        if doc.get("$patch") == "delete":
            items.remove(target)
        else:
            target.obj = strategic_merge(target.obj, doc, f"{where}: patch for {kind} {name}")


def strategic_merge(base: Any, patch: Any, where: str, field: str = "") -> Any:
    """``patch`` applied to ``base`` as a strategic merge patch, in the subset described above."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise KustomizeError(f"{where}: directive {key} not implemented")
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, where, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and any(isinstance(v, dict) for v in patch):
        if field not in MERGED_BY_NAME:
            raise KustomizeError(f"{where}: merging the list {field} not implemented")
        merged_list = copy.deepcopy(base)
        for item in patch:
            same = next((i for i, b in enumerate(merged_list) if b.get("name") == item.get("name")), None)
            if same is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[same] = strategic_merge(merged_list[same], item, where)
        return merged_list
    return copy.deepcopy(patch)


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs inside a workload (the kinds deploy/kubernetes uses)."""
    spec = obj.get("spec", {})
    if obj.get("kind") == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif obj.get("kind") == "Job":
        yield spec["template"]["spec"]
    elif obj.get("kind") == "Pod":
        yield spec


def references(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """``(kind, mapping, key)`` for every name in ``pod`` that refers to another object."""
    for volume in pod.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"], "claimName"
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"], "name"
        if "secret" in volume:
            yield "Secret", volume["secret"], "secretName"
    containers: list[dict[str, Any]] = pod.get("containers", []) + pod.get("initContainers", [])
    for container in containers:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield "ConfigMap", source["configMapRef"], "name"
            if "secretRef" in source:
                yield "Secret", source["secretRef"], "name"
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                yield "ConfigMap", ref["configMapKeyRef"], "name"
            if "secretKeyRef" in ref:
                yield "Secret", ref["secretKeyRef"], "name"


def _prefix(items: list[Built], prefix: str) -> None:
    renamed = {}
    for item in items:
        renamed[item.key] = prefix + item.key[1]
        item.obj["metadata"]["name"] = renamed[item.key]
    # Only references to objects of this build follow; others (a claim shared
    # by several prefixed builds) keep their name.
    for item in items:
        for pod in pod_specs(item.obj):
            for kind, mapping, key in references(pod):
                mapping[key] = renamed.get((kind, mapping[key]), mapping[key])


def _set_image(items: list[Built], image: dict[str, Any]) -> None:
    for item in items:
        for pod in pod_specs(item.obj):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name = re.split(r"[@]|:(?=[^/]*$)", container["image"])[0]
                if name != image["name"]:
                    continue
                new = str(image.get("newName", name))
                tag = f":{image['newTag']}" if "newTag" in image else ""
                digest = f"@{image['digest']}" if "digest" in image else ""
                container["image"] = new + tag + digest


# --- the checks -----------------------------------------------------------------------


def manifests(directory: Path = KUBE) -> list[tuple[str, dict[str, Any]]]:
    """Every object the kustomization in ``directory`` makes, with where it comes from."""
    return [(item.origin, item.obj) for item in build(directory)]


def schema_file(doc: dict[str, Any]) -> Path:
    """kubernetes-validate's naming: ``<kind>-<group>-<version>.json``, ``<kind>-<version>.json`` for core."""
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(doc.get("apiVersion", "")))
    return SCHEMA_DIR / f"{str(doc.get('kind', '')).lower()}-{api}.json"


def _registry() -> Registry[Any]:
    definitions = json.loads((SCHEMA_DIR / "_definitions.json").read_text(encoding="utf-8"))
    return Resource.from_contents(definitions) @ Registry()


def validate(doc: dict[str, Any], registry: Registry[Any] | None = None) -> list[str]:
    """Schema errors of one object, as ``path: message`` lines (empty when valid)."""
    path = schema_file(doc)
    if not path.is_file():
        return [f"no vendored schema for {doc.get('apiVersion')} {doc.get('kind')} ({path.name})"]
    schema = json.loads(path.read_text(encoding="utf-8"))
    registry = registry if registry is not None else _registry()
    validator = Draft202012Validator(schema, registry=Resource.from_contents(schema) @ registry)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]


def dangling_references(items: list[Built]) -> list[str]:
    """References from pods to ConfigMaps, Secrets and claims that the build does not make."""
    present = {item.key for item in items}
    problems = []
    for item in items:
        for pod in pod_specs(item.obj):
            for kind, mapping, key in references(pod):
                if (kind, mapping[key]) not in present:
                    problems.append(f"{item.key[0]} {item.key[1]}: {kind} {mapping[key]} is not part of the build")
    return problems


def check(directory: Path, registry: Registry[Any]) -> tuple[int, list[str]]:
    """How many objects ``directory`` builds, and every problem found with them."""
    used: set[Path] = set()
    try:
        items = build(directory, used)
    except (KustomizeError, OSError, yaml.YAMLError) as exc:
        return 0, [str(exc)]
    problems: list[str] = []
    for item in items:
        name = f"{item.origin}: {item.key[0]} {item.key[1]}"
        problems.extend(f"{name}: {error}" for error in validate(item.obj, registry))
    problems += dangling_references(items)
    for folder in {p.parent for p in used}:
        for path in sorted(folder.glob("*.yaml")):
            if path.resolve() not in used:
                problems.append(f"{_relative(path)}: used by no kustomization (neither a resource nor a patch)")
    return len(items), problems


def main() -> int:
    registry = _registry()
    problems: list[str] = []
    summary = []
    for directory in ENTRY_POINTS:
        count, found = check(directory, registry)
        problems += found
        summary.append(f"{_relative(directory)} ({count} objects)")
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    print(f"{', '.join(summary)}: built and valid against the Kubernetes {SCHEMA_DIR.name} schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
