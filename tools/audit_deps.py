"""Audit the locked dependencies with pip-audit (``make lint``).

Known vulnerabilities fail the build. A vulnerability service that cannot be
reached (no network, or a mirror that does not serve PyPI's JSON API) does not:
the audit is reported as skipped, loudly, and the build goes on. Set
AUDIT_REQUIRED=1 where the service must be reachable, to make that a failure too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-build.lock")
TIMEOUT = 300
OFFLINE_HINTS = ("ConnectionError", "NameResolutionError", "Max retries exceeded", "ServiceError", "timed out")


def run_pip_audit(report: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip_audit", "--disable-pip", "--require-hashes", "--progress-spinner", "off"]
    for lock in LOCKS:
        cmd += ["-r", str(REPO / lock)]
    cmd += ["--format", "json", "--output", str(report)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def skipped(reason: str) -> int:
    print(f"pip-audit: SKIPPED, no vulnerability check was made: {reason}")
    if os.environ.get("AUDIT_REQUIRED") == "1":
        print("pip-audit: AUDIT_REQUIRED=1, so that is a failure", file=sys.stderr)
        return 1
    print("pip-audit: run `make lint` where PyPI's JSON API is reachable for a real audit")
    return 0


def summarize(data: dict[str, Any]) -> int:
    deps = data.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    not_audited = [d for d in deps if "skip_reason" in d]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            print(f"pip-audit: {dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})", file=sys.stderr)
    if vulnerable:
        print(f"pip-audit: {len(vulnerable)} locked dependencies have known vulnerabilities", file=sys.stderr)
        return 1
    if deps and len(not_audited) == len(deps):
        reason = deps[0]["skip_reason"]
        return skipped(f"the service answered for none of the {len(deps)} locked dependencies ({reason})")
    for dep in not_audited:
        print(f"pip-audit: WARNING: {dep['name']} {dep.get('version', '')} was not audited: {dep['skip_reason']}")
    print(f"pip-audit: no known vulnerabilities in {len(deps) - len(not_audited)} locked dependencies")
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        try:
            proc = run_pip_audit(report)
        except subprocess.TimeoutExpired:
            return skipped(f"pip-audit did not finish in {TIMEOUT} s")
        text = report.read_text() if report.is_file() else ""
    if not text.strip():
        output = proc.stderr + proc.stdout
        if any(hint in output for hint in OFFLINE_HINTS):
            last = output.strip().splitlines()[-1] if output.strip() else "no output"
            return skipped(f"the vulnerability service is not reachable ({last[:200]})")
        sys.stderr.write(output)
        print(f"pip-audit: failed with exit {proc.returncode} and no report", file=sys.stderr)
        return 1
    return summarize(json.loads(text))


if __name__ == "__main__":
    sys.exit(main())
