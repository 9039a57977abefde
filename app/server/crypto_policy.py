"""SSH_ALGORITHMS: which algorithms the job offers, and what a session negotiated.

``modern`` offers AEAD ciphers, or CTR with SHA-2 MACs; curve25519, the ML-KEM
hybrid, ECDH and DH groups 14/16/18 with SHA-2; and host keys with SHA-2
signatures. ``compat`` adds everything else paramiko can speak (CBC, 3DES,
hmac-sha1, hmac-md5, group exchange), after the modern ones, and each session that
uses one of those is named in a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import paramiko

from app.errors import AuthError

MODERN = "modern"
COMPAT = "compat"

# In preference order. The ML-KEM hybrid first: it resists a recorded session
# being decrypted later by a quantum computer, and costs one round trip like curve25519.
MODERN_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
# AES-GCM first: no separate MAC pass, a large share of paramiko's per-packet work.
MODERN_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
# Encrypt-then-MAC first; the plain SHA-2 MACs are allowed for CTR.
MODERN_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
MODERN_HOST_KEYS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    # Host certificates of the same keys (host_certs.py), offered when known_hosts trusts a CA.
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
)

# What paramiko's handshake log line starts with, for each list of the server's offer.
_OFFER_LINES = {
    "kex algos: ": "kex",
    "server key: ": "host keys",
    "server encrypt: ": "ciphers",
    "server mac: ": "macs",
}
# Most characters of one offered list shown in an error: the server chose them.
_OFFER_CHARS = 400


@dataclass(frozen=True)
class Negotiated:
    """What one SSH session uses, for the run report, the JSON log and status."""

    kex: str
    cipher: str
    mac: str
    host_key_type: str

    def as_dict(self) -> dict[str, str]:
        return {"kex": self.kex, "cipher": self.cipher, "mac": self.mac, "host_key_type": self.host_key_type}

    def weak(self) -> list[str]:
        """The algorithms in use that ``modern`` would not have offered."""
        used = [(self.kex, MODERN_KEX), (self.cipher, MODERN_CIPHERS), (self.host_key_type, MODERN_HOST_KEYS)]
        if self.mac != IMPLICIT_MAC:
            used.append((self.mac, MODERN_MACS))
        return [name for name, modern in used if name and name not in modern]

    def __str__(self) -> str:
        return f"kex {self.kex}, cipher {self.cipher}, mac {self.mac}, host key {self.host_key_type}"


# An AEAD cipher authenticates the packets itself; no MAC is used (OpenSSH says "<implicit>").
IMPLICIT_MAC = "implicit"


def apply(options: paramiko.transport.SecurityOptions, policy: str) -> None:
    """Offer the policy's algorithms, of those this paramiko supports, in its order."""
    modern = {
        "kex": MODERN_KEX,
        "ciphers": MODERN_CIPHERS,
        "digests": MODERN_MACS,
    }
    for attribute, preferred in modern.items():
        offered = tuple(getattr(options, attribute))
        supported = _supported(options, attribute)
        head = tuple(a for a in preferred if a in supported)
        rest = tuple(a for a in offered if a not in head) if policy == COMPAT else ()
        setattr(options, attribute, head + rest)
    # Host keys: the caller has put the known key types first; keep that order.
    keys = tuple(options.key_types)
    if policy != COMPAT:
        keys = tuple(k for k in keys if k in MODERN_HOST_KEYS)
    options.key_types = keys


def _supported(options: paramiko.transport.SecurityOptions, attribute: str) -> frozenset[str]:
    info = {"kex": "_kex_info", "ciphers": "_cipher_info", "digests": "_mac_info"}[attribute]
    table: dict[str, Any] = getattr(options._transport, info)
    return frozenset(table)


class OfferLog(logging.Handler):
    """Collects the server's algorithm lists and the agreed key exchange from paramiko's
    handshake log: paramiko keeps neither where a caller can read it once the
    handshake fails (or, for the kex name, at all)."""

    def __init__(self, transport: paramiko.Transport) -> None:
        super().__init__(logging.DEBUG)
        self.offered: dict[str, str] = {}
        self.kex = ""
        self.transport = transport
        self.usual = transport.logger
        # A logger of this transport's own, so that concurrent handshakes do not mix: not
        # registered (nothing accumulates over reconnects), named and parented as the usual
        # one, so that paramiko's records read and travel as before.
        own = logging.Logger(self.usual.name, logging.DEBUG)
        own.parent = self.usual.parent
        own.addHandler(self)
        transport.logger = own
        transport.packetizer.set_log(own)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for prefix, what in _OFFER_LINES.items():
            if text.startswith(prefix):
                self.offered[what] = text[len(prefix) :][:_OFFER_CHARS]
        if text.startswith("Kex: "):
            self.kex = text[len("Kex: ") :]

    def close(self) -> None:
        """Stop collecting: after the handshake, paramiko logs at our level again."""
        self.transport.logger = self.usual
        self.transport.packetizer.set_log(self.usual)
        super().close()


def negotiated(transport: paramiko.Transport, offers: OfferLog) -> Negotiated:
    cipher = str(transport.local_cipher or "")
    aead = bool(paramiko.Transport._cipher_info.get(cipher, {}).get("is_aead"))
    mac = IMPLICIT_MAC if aead else str(transport.local_mac or "")
    return Negotiated(kex=offers.kex, cipher=cipher, mac=mac, host_key_type=str(transport.host_key_type or ""))


class CryptoPolicyError(AuthError):
    """The server offers nothing the policy allows; retrying cannot help (exit 3)."""


def refusal(policy: str, peer: str, exc: paramiko.IncompatiblePeer, offers: OfferLog) -> CryptoPolicyError:
    """The one-line error for a server that shares no algorithm of some kind with us."""
    reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "no common algorithm"
    offered = "; ".join(f"{what}: {offers.offered[what]}" for what in _OFFER_LINES.values() if what in offers.offered)
    knob = (
        "; SSH_ALGORITHMS=compat also offers the weak algorithms paramiko supports (CBC, 3DES, hmac-sha1, hmac-md5)"
        if policy == MODERN
        else ""
    )
    return CryptoPolicyError(
        f"SSH_ALGORITHMS={policy}: {peer} shares no algorithm with the job ({reason});"
        f" the server offers {offered or 'nothing readable'}{knob}"
    )
