"""Check deploy/systemd/ and deploy/cron/ offline (``make lint``): no running systemd needed.

- ``systemd-analyze verify`` on the units, in a throwaway root holding them, the
  distribution's own units (the default dependencies every unit has) and an
  empty stand-in for each program the units start: ``verify`` refuses a unit
  whose ExecStart= does not exist, and the job is not installed where the lint
  runs. Any message fails the check: ``verify`` reports a misspelt key or a bad
  value with exit status 0.
- ``systemd-analyze security --offline`` on each service: the overall exposure
  must stay at or below MAX_EXPOSURE.
- The cron file: five valid time fields, a user, and the same command line as
  the service's ExecStart=.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "deploy" / "systemd"
CRON = REPO / "deploy" / "cron" / "sftp-ipi"
# Where Debian (and most distributions) keep the units they ship.
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
# systemd-analyze's scale is 0-10 (shown) times 10 (for --threshold); 2.0 is well
# inside "OK" and leaves the sandbox no room to loosen unnoticed. Today's: 1.3.
MAX_EXPOSURE = 20

EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost", "ExecCondition")
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
CRON_NAMES = {
    "month": ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    "day of week": ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}


# The instance name template units are verified with (a feed's name).
INSTANCE = "feed-a"


def unit_files(directory: Path = SYSTEMD) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".service", ".timer"))


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of ``key`` in a unit file (continuation lines are not used in ours)."""
    return [
        line.split("=", 1)[1].strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.split("=", 1)[0].strip() == key
    ]


def programs(path: Path) -> list[str]:
    """The absolute paths of the programs a unit starts (after the ``-@:+!`` prefixes)."""
    found = []
    for key in EXEC_KEYS:
        for value in unit_values(path, key):
            program = value.lstrip("-@:+!").split()[0]
            if program.startswith("/"):
                found.append(program)
    return found


def _fake_root(root: Path, units: list[Path]) -> list[Path]:
    """Lay out ``root`` for ``--root``; returns the units' paths inside it."""
    system = next((d for d in SYSTEM_UNITS if d.is_dir()), None)
    if system is None:
        raise FileNotFoundError("no system unit directory (/usr/lib/systemd/system): install the package systemd")
    shutil.copytree(system, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    target = root / "etc" / "systemd" / "system"
    target.mkdir(parents=True)
    placed = []
    for unit in units:
        for program in programs(unit):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
        # A template (sftp-ipi@.service) is verified as an instance of it: systemd
        # loads a template only for an instance name, with %i filled in.
        name = unit.name.replace("@.", f"@{INSTANCE}.") if "@." in unit.name else unit.name
        placed.append(Path(shutil.copy(unit, target / name)))
    return placed


def _analyze(*args: str) -> tuple[int, str]:
    proc = subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def verify_units(units: list[Path]) -> list[str]:
    """Problems ``systemd-analyze`` finds in ``units``, one line each (empty when they are sound)."""
    if shutil.which("systemd-analyze") is None:
        return ["systemd-analyze not found: install the Debian package systemd (make lint does)"]
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sftp-ipi-units-") as tmp:
        root = Path(tmp)
        placed = _fake_root(root, units)
        code, output = _analyze("verify", "--man=no", f"--root={root}", *map(str, placed))
        if code != 0 or output:
            problems += [f"systemd-analyze verify: {line.replace(tmp, '')}" for line in output.splitlines()]
            problems += [] if output else [f"systemd-analyze verify: exit status {code}"]
        for unit in placed:
            if unit.suffix != ".service":
                continue
            args = ("security", "--offline=true", f"--threshold={MAX_EXPOSURE}", f"--root={root}", str(unit))
            code, output = _analyze(*args)
            if code != 0:
                level = output.splitlines()[-1] if output else f"exit status {code}"
                problems.append(f"{unit.name}: exposure above {MAX_EXPOSURE / 10}: {level}")
    return problems


def _cron_field(text: str, name: str, low: int, high: int) -> bool:
    names = CRON_NAMES.get(name, [])
    for part in text.lower().split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2:
            return False
        for bound in bounds:
            if bound in names:
                continue
            if not (bound.isdigit() and low <= int(bound) <= high):
                return False
    return True


def cron_entries(path: Path = CRON) -> list[tuple[int, str]]:
    """The job lines of a cron.d file with their line numbers (comments and VAR=value lines left out)."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", stripped):
            entries.append((number, stripped))
    return entries


def verify_cron(path: Path = CRON, service: Path = SYSTEMD / "sftp-ipi.service") -> list[str]:
    problems = []
    (exec_start,) = unit_values(service, "ExecStart")
    entries = cron_entries(path)
    if not entries:
        problems.append(f"{path.name}: no job line")
    for number, line in entries:
        fields = line.split(None, 6)
        where = f"{path.name}:{number}"
        if len(fields) < 7:
            problems.append(f"{where}: expected 5 time fields, a user and a command")
            continue
        for text, (name, low, high) in zip(fields[:5], CRON_FIELDS, strict=True):
            if not _cron_field(text, name, low, high):
                problems.append(f"{where}: invalid {name} field {text!r}")
        if not fields[6].startswith(exec_start):
            problems.append(f"{where}: the command differs from {service.name}'s ExecStart={exec_start}")
    return problems


def main() -> int:
    problems = verify_units(unit_files()) + verify_cron()
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    names = ", ".join(p.name for p in unit_files())
    print(f"deploy/systemd: {names} valid (systemd-analyze verify, security <= {MAX_EXPOSURE / 10}); deploy/cron valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
