"""Validate deploy/kubernetes/ against the vendored Kubernetes JSON schemas (``make lint``).

Every manifest listed in kustomization.yaml, and the Secret its secretGenerator
makes, is checked against the strict schema of its kind (unknown or misplaced
fields are errors). Works offline: the schemas live in deploy/kubernetes/schemas/.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "deploy" / "kubernetes"
SCHEMA_DIR = KUBE / "schemas" / "v1.33.0-local-strict"


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: a document is not a mapping")
    return docs


def kustomization() -> dict[str, Any]:
    (doc,) = load_yaml_documents(KUBE / "kustomization.yaml")
    return doc


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every object the kustomization's resources define, with the file it comes from."""
    found: list[tuple[Path, dict[str, Any]]] = []
    for name in kustomization().get("resources", []):
        path = KUBE / name
        found.extend((path, doc) for doc in load_yaml_documents(path))
    return found


def generated_secrets() -> list[dict[str, Any]]:
    """The Secrets the secretGenerator makes (the data is a placeholder: the files are not in git)."""
    secrets = []
    for gen in kustomization().get("secretGenerator", []):
        keys = [entry.split("=", 1)[0] for entry in gen.get("files", [])]
        keys += [entry.split("=", 1)[0] for entry in gen.get("literals", [])]
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": gen["name"]},
                "type": gen.get("type", "Opaque"),
                "data": dict.fromkeys(keys, ""),
            }
        )
    return secrets


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


def main() -> int:
    registry = _registry()
    listed = {KUBE / name for name in kustomization().get("resources", [])}
    problems: list[str] = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name != "kustomization.yaml" and path not in listed:
            problems.append(f"{path.relative_to(REPO)}: not listed in kustomization.yaml resources")
    checked = 0
    objects = [(p.relative_to(REPO).as_posix(), d) for p, d in manifests()]
    objects += [("kustomization.yaml secretGenerator", s) for s in generated_secrets()]
    for origin, doc in objects:
        name = f"{origin}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        problems.extend(f"{name}: {error}" for error in validate(doc, registry))
        checked += 1
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    print(f"deploy/kubernetes: {checked} objects valid against the Kubernetes {SCHEMA_DIR.name} schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
