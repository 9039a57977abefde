"""Reading an OpenSSH known_hosts file for one host: pure parsing, no I/O.

paramiko's HostKeys cannot be used for this: it raises on marker lines
(``@cert-authority``, ``@revoked``; paramiko issues #771 and #1990), so one such
line anywhere in the file stopped every run, and it knows neither revocation nor
host patterns (``*``, ``?``, ``!``). This follows sshd(8)'s SSH_KNOWN_HOSTS FILE
FORMAT for what the job can use, and names every line it cannot.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass, field

# Marker lines the job understands; any other "@..." line is skipped and named.
REVOKED = "@revoked"
CERT_AUTHORITY = "@cert-authority"
HASHED_PREFIX = "|1|"


@dataclass(frozen=True)
class Unusable:
    """A line the job skipped, and why."""

    line: int
    why: str


@dataclass(frozen=True)
class HostKeys:
    """What a known_hosts file says about one host (as ``host`` or ``[host]:port``)."""

    # Key type -> the key blobs recorded for the host, in file order.
    keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    # Key blob -> the line marking it @revoked for the host.
    revoked: dict[bytes, int] = field(default_factory=dict)
    unusable: tuple[Unusable, ...] = ()
    # @cert-authority keys trusted to sign host certificates for the host (host_certs.py).
    authorities: tuple[bytes, ...] = ()


def parse(text: str, host: str) -> HostKeys:
    """The keys, revocations and unusable lines of ``text`` (a known_hosts file) for ``host``."""
    keys: dict[str, list[bytes]] = {}
    revoked: dict[bytes, int] = {}
    unusable: list[Unusable] = []
    authorities: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if marker not in (None, REVOKED, CERT_AUTHORITY):
            unusable.append(Unusable(number, f"unknown marker {marker[:40]!r}"))
            continue
        if len(fields) < 3:
            unusable.append(Unusable(number, "not a known_hosts entry (host, key type and key expected)"))
            continue
        patterns, key_type, encoded = fields[:3]
        blob = key_blob(key_type, encoded)
        if blob is None:
            unusable.append(Unusable(number, f"the key is not a valid {key_type[:40]!r} key"))
            continue
        if not host_matches(patterns, host):
            continue
        if marker == REVOKED:
            revoked.setdefault(blob, number)
        elif marker == CERT_AUTHORITY:
            authorities.append(blob)
        else:
            keys.setdefault(key_type, []).append(blob)
    return HostKeys({t: tuple(b) for t, b in keys.items()}, revoked, tuple(unusable), tuple(authorities))


def key_blob(key_type: str, encoded: str) -> bytes | None:
    """The decoded key, or None unless it is valid base64 that names ``key_type`` as its own type."""
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    # An SSH public key blob starts with its type as an SSH string (length, bytes).
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    return blob if blob[4 : 4 + length] == key_type.encode("ascii", "replace") else None


def host_matches(patterns: str, host: str) -> bool:
    """Whether a known_hosts host field (a hashed name, or comma-separated patterns
    with ``*``, ``?`` and ``!`` negation) names ``host``; OpenSSH compares case-insensitively."""
    if patterns.startswith(HASHED_PREFIX):
        return _hashed_match(patterns, host)
    host = host.lower()
    matched = False
    for pattern in patterns.lower().split(","):
        negated = pattern.startswith("!")
        if _glob(pattern[1:] if negated else pattern).fullmatch(host):
            if negated:
                # A negated match rejects the line whatever the other patterns say.
                return False
            matched = True
    return matched


def _glob(pattern: str) -> re.Pattern[str]:
    # Only "*" and "?" are special; "[" is literal, as in "[host]:port".
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def _hashed_match(entry: str, host: str) -> bool:
    """``|1|base64(salt)|base64(HMAC-SHA1(salt, host))``, as ssh-keygen -H writes it."""
    parts = entry.split("|")
    if len(parts) != 4:
        return False
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = hmac.new(salt, host.encode("utf-8"), hashlib.sha1).digest()
    return hmac.compare_digest(expected, digest)
