"""The container's dependencies: hash-pinned locks in step with pyproject.toml, and the
audit that `make lint` runs over them."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import audit_deps  # noqa: E402

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def parse_lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """``{name: (version, [hashes])}`` for every requirement in a lock file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in (REPO / name).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = PIN.match(stripped)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), [])
        elif stripped.startswith("--hash="):
            assert current, f"{name}: a hash before any requirement"
            pins[current][1].append(stripped.removeprefix("--hash=").rstrip(" \\"))
        else:
            pytest.fail(f"{name}: not a pinned requirement or hash: {line!r}")
    return pins


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-build.lock"])
def test_every_locked_requirement_is_pinned_with_sha256_hashes(lock: str) -> None:
    pins = parse_lock(lock)
    assert pins
    for name, (_version, hashes) in pins.items():
        assert hashes, f"{lock}: {name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_runtime_lock_satisfies_pyproject_and_holds_no_dev_tools() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = parse_lock("requirements.lock")
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{name}=={pins[name][0]} vs {spec}"
    for spec in project["optional-dependencies"]["dev"]:
        name = canonicalize_name(Requirement(spec).name)
        assert name not in pins, f"dev tool {name} would end up in the image"


def test_build_lock_satisfies_the_build_system() -> None:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = parse_lock("requirements-build.lock")
    for spec in requires:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name][0]), spec


def test_audit_fails_on_a_known_vulnerability(capsys: pytest.CaptureFixture[str]) -> None:
    report = {
        "dependencies": [
            {"name": "paramiko", "version": "1.0", "vulns": [{"id": "PYSEC-0000-1", "fix_versions": ["1.1"]}]},
            {"name": "backoff", "version": "2.2.1", "vulns": []},
        ]
    }
    assert audit_deps.summarize(report) == 1
    assert "PYSEC-0000-1" in capsys.readouterr().err


def test_audit_passes_when_clean(capsys: pytest.CaptureFixture[str]) -> None:
    report = {"dependencies": [{"name": "backoff", "version": "2.2.1", "vulns": []}]}
    assert audit_deps.summarize(report) == 0
    assert "no known vulnerabilities in 1" in capsys.readouterr().out


def test_an_unreachable_vulnerability_service_is_a_loud_skip_not_a_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "Dependency not found on PyPI and could not be audited: backoff (2.2.1)"
    report = {"dependencies": [{"name": "backoff", "skip_reason": reason}]}
    monkeypatch.delenv("AUDIT_REQUIRED", raising=False)
    assert audit_deps.summarize(report) == 0
    assert "SKIPPED" in capsys.readouterr().out
    monkeypatch.setenv("AUDIT_REQUIRED", "1")
    assert audit_deps.summarize(report) == 1
