"""OpenSSH host certificates, checked against ``@cert-authority`` lines of known_hosts.

paramiko parses a certificate host key and checks the server's signature with
the certified key, but verifies nothing of the certificate itself (paramiko
#771, #2277). This does what ssh(1) does (PROTOCOL.certkeys; sshkey.c
``sshkey_cert_check_authority``): the certificate is a host certificate, signed
by a CA the known_hosts file trusts for this host, names the host among its
principals, is within its validity window, and has no critical option the job
does not understand (none is defined for host certificates). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import paramiko

CERT_SUFFIX = "-cert-v01@openssh.com"
# PROTOCOL.certkeys: the certificate's type field.
HOST_CERT = 2
# The number of SSH strings (or mpints) in each key type's public part.
_KEY_FIELDS = {"ssh-ed25519": 1, "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2, "ecdsa-sha2-nistp521": 2}
_KEY_FIELDS["ssh-rsa"] = 2  # e and n; the type of an RSA certificate whatever its signatures
# The host-key algorithms to offer first when known_hosts trusts a CA for the host.
CERT_ALGORITHMS = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
)


class CertificateError(Exception):
    """Why a host certificate is not good (the caller names the host)."""


@dataclass(frozen=True)
class HostCertificate:
    key_type: str  # of the certified key, e.g. ssh-ed25519
    key: bytes  # the certified key's own blob, as a plain public key
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    ca_key: bytes  # the signing CA's public key blob
    signed: bytes  # everything the signature covers
    signature: bytes


def is_certificate(key: paramiko.PKey) -> bool:
    blob = key.public_blob
    return blob is not None and str(blob.key_type).endswith(CERT_SUFFIX)


def parse(blob: bytes) -> HostCertificate:
    """The fields of an OpenSSH certificate blob; CertificateError if it is malformed."""
    try:
        msg = paramiko.Message(blob)
        cert_type_name = msg.get_text()
        if not cert_type_name.endswith(CERT_SUFFIX):
            raise CertificateError("not a certificate")
        key_type = cert_type_name[: -len(CERT_SUFFIX)]
        key_type = "ssh-rsa" if key_type.startswith("rsa-sha2-") else key_type
        fields = _KEY_FIELDS.get(key_type)
        if fields is None:
            raise CertificateError(f"certificate of an unsupported key type {key_type[:40]!r}")
        msg.get_string()  # nonce
        plain = paramiko.Message()
        plain.add_string(key_type)
        for _ in range(fields):
            plain.add_string(msg.get_string())
        serial = msg.get_int64()
        cert_type = msg.get_int()
        key_id = msg.get_string().decode("utf-8", "replace")
        principals = _strings(msg.get_string())
        valid_after = msg.get_int64()
        valid_before = msg.get_int64()
        critical = msg.get_string()
        msg.get_string()  # extensions: none concern a host certificate
        msg.get_string()  # reserved
        ca_key = msg.get_string()
        signed_length = len(blob) - len(msg.get_remainder())
        signature = msg.get_string()
    except CertificateError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read the server's bytes means malformed
        raise CertificateError(f"malformed certificate ({exc.__class__.__name__})") from None
    return HostCertificate(
        key_type=key_type,
        key=plain.asbytes(),
        serial=serial,
        cert_type=cert_type,
        key_id=key_id,
        principals=principals,
        valid_after=valid_after,
        valid_before=valid_before,
        critical_options=critical,
        ca_key=ca_key,
        signed=blob[:signed_length],
        signature=signature,
    )


def _strings(packed: bytes) -> tuple[str, ...]:
    msg = paramiko.Message(packed)
    names: list[str] = []
    while msg.get_remainder():
        names.append(msg.get_string().decode("utf-8", "replace"))
    return tuple(names)


def check(
    cert: HostCertificate, *, authorities: tuple[bytes, ...], revoked: frozenset[bytes], host: str, now: float
) -> None:
    """Raise CertificateError unless ``cert`` is a good host certificate for ``host`` at ``now``."""
    if cert.ca_key in revoked:
        raise CertificateError("its CA key is marked @revoked")
    if cert.key in revoked:
        raise CertificateError("its key is marked @revoked")
    if cert.cert_type != HOST_CERT:
        raise CertificateError("it is not a host certificate")
    if cert.ca_key not in authorities:
        raise CertificateError("it is signed by a CA that known_hosts does not trust for this host (@cert-authority)")
    if not _signature_good(cert):
        raise CertificateError("its CA signature does not verify")
    # An empty principal list would be valid for any host: OpenSSH refuses it for host certificates.
    if host.lower() not in (p.lower() for p in cert.principals):
        shown = ", ".join(p[:80] for p in cert.principals[:5]) or "none"
        raise CertificateError(f"it is not valid for {host} (principals: {shown})")
    if now < cert.valid_after:
        raise CertificateError("it is not valid yet")
    if now >= cert.valid_before:
        raise CertificateError("it has expired")
    if cert.critical_options:
        raise CertificateError("it has critical options, which no host certificate may have")


def _signature_good(cert: HostCertificate) -> bool:
    try:
        ca_type = paramiko.Message(cert.ca_key).get_text()
        ca = paramiko.PKey.from_type_string(ca_type, cert.ca_key)
        return bool(ca.verify_ssh_sig(cert.signed, paramiko.Message(cert.signature)))
    except Exception:  # noqa: BLE001 - a CA key or signature paramiko cannot read does not verify
        return False
