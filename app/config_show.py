"""``sftp-ipi config``: every effective setting and where its value came from.

Like ``rclone config show``, but for one feed: the value the run would use, and its
source (the default, a dotenv file and line, the environment, or under systemd the
unit's Environment=). Secrets are
masked; a secret read from a ``*_FILE`` setting is named by that file's path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from app.config import Settings, dotenv_lines, env_name

MASK = "********"


@dataclass(frozen=True)
class Effective:
    name: str
    value: str  # as the run uses it, a secret masked
    source: str  # "default", "environment", "systemd unit (Environment=)", or "PATH:LINE" of a dotenv file


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def effective(settings: Settings, env_file: Path | None, environ: Mapping[str, str]) -> list[Effective]:
    """Every setting of ``settings`` in declaration order, with its source."""
    path = env_file if env_file is not None else Path(".env")
    lines = dotenv_lines(path) if path.is_file() else {}
    # Under systemd (INVOCATION_ID is set for every unit it starts) the environment is
    # what the unit's Environment= lines set: named so, an operator looks in the unit,
    # not in a shell profile. Elsewhere it is just the environment.
    from_environment = "systemd unit (Environment=)" if environ.get("INVOCATION_ID") else "environment"
    out: list[Effective] = []
    for f in fields(Settings):
        if f.metadata.get("internal"):
            continue
        name = env_name(f.name)
        if name in environ:
            source = from_environment
        elif name in lines:
            source = f"{path}:{lines[name]}"
        else:
            source = "default"
        value = getattr(settings, f.name)
        shown = _shown(value)
        if f.metadata["sensitive"] and value is not None:
            # A secret read from its *_FILE setting is named by that file, never shown.
            from_file = getattr(settings, f"{f.name}_file", None)
            shown = f"{MASK} (from {name}_FILE={from_file})" if from_file is not None else MASK
        out.append(Effective(name, shown, source))
    return out


def render(rows: list[Effective], as_json: bool) -> str:
    if as_json:
        return json.dumps([{"name": r.name, "value": r.value, "source": r.source} for r in rows], indent=2)
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{r.name.ljust(width)} = {r.value}  # {r.source}" for r in rows)
