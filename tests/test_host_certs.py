"""Host certificates (@cert-authority in known_hosts) against a real sshd with HostCertificate."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Server, file_sha256, keygen, run_job, sha256

MiB = 1024 * 1024


def public(path: Path) -> str:
    parts = Path(f"{path}.pub").read_text().split()
    return f"{parts[0]} {parts[1]}"


def certified_server(server: Server, tmp: Path, *, principals: str = "127.0.0.1", validity: str = "-5m:+1h") -> Path:
    """Restart ``server`` with a host key of its own and a certificate for it; returns the CA."""
    ca = keygen(tmp / "host_ca")
    host_key = keygen(tmp / "certified_host")
    subprocess.run(
        [
            *("ssh-keygen", "-q", "-s", str(ca), "-h", "-I", "test-host"),
            "-n",
            principals,
            "-V",
            validity,
            f"{host_key}.pub",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    server.sshd.stop()
    server.sshd.host_key = host_key
    server.sshd.extra_config = [f"HostCertificate {host_key}-cert.pub"]
    server.sshd.start()
    return ca


def known_hosts(server: Server, *lines: str) -> Path:
    path = server.tmp / "known_hosts_ca"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def name(server: Server) -> str:
    return f"[127.0.0.1]:{server.port}"


def test_certificate_signed_by_a_trusted_ca_is_accepted_without_the_host_key(server: Server, tmp_path: Path) -> None:
    ca = certified_server(server, tmp_path)
    data = os.urandom(MiB)
    server.put("20250428.IPI", data)
    known = known_hosts(server, f"@cert-authority {name(server)} {public(ca)}")
    report = server.tmp / "report.json"

    result = run_job(server.env(SFTP_KNOWN_HOSTS=known, REPORT_FILE=report), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert json.loads(report.read_text())["ssh"]["host_key_type"] == "ssh-ed25519-cert-v01@openssh.com"
    assert "skipped what the job cannot use" not in result.stderr


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"principals": "sftp.other.example"}, "it is not valid for 127.0.0.1 (principals: sftp.other.example)"),
        ({"validity": "20200101:20200102"}, "it has expired"),
    ],
)
def test_certificate_for_another_host_or_expired_is_exit_3(
    server: Server, tmp_path: Path, changes: dict[str, str], why: str
) -> None:
    ca = certified_server(server, tmp_path, **changes)
    server.put("20250428.IPI", b"x" * 100)
    known = known_hosts(server, f"@cert-authority {name(server)} {public(ca)}")

    result = run_job(server.env(SFTP_KNOWN_HOSTS=known), server.tmp / "cwd")

    assert result.code == 3, result.output
    assert f"host certificate of {name(server)} refused: {why}" in result.stderr
    assert not (server.served / "20250428.IPI").exists()


def test_certificate_of_an_untrusted_or_revoked_ca_is_exit_3(server: Server, tmp_path: Path) -> None:
    ca = certified_server(server, tmp_path)
    stranger = keygen(tmp_path / "stranger_ca")
    server.put("20250428.IPI", b"x" * 100)

    untrusted = known_hosts(server, f"@cert-authority {name(server)} {public(stranger)}")
    result = run_job(server.env(SFTP_KNOWN_HOSTS=untrusted), server.tmp / "cwd")
    assert result.code == 3, result.output
    assert "signed by a CA that known_hosts does not trust" in result.stderr

    revoked = known_hosts(
        server, f"@cert-authority {name(server)} {public(ca)}", f"@revoked {name(server)} {public(ca)}"
    )
    result = run_job(server.env(SFTP_KNOWN_HOSTS=revoked), server.tmp / "cwd")
    assert result.code == 3, result.output
    assert "its CA key is marked @revoked" in result.stderr


def test_ca_for_another_host_pattern_does_not_vouch(server: Server, tmp_path: Path) -> None:
    ca = certified_server(server, tmp_path)
    server.put("20250428.IPI", b"x" * 100)
    known = known_hosts(server, f"@cert-authority *.example.org {public(ca)}")

    result = run_job(server.env(SFTP_KNOWN_HOSTS=known), server.tmp / "cwd")

    # No CA for this host: the job asks for a plain key, which is not recorded (strict).
    assert result.code == 3, result.output
    assert "is not in" in result.stderr


def test_a_certificate_altered_after_signing_does_not_verify(tmp_path: Path) -> None:
    import base64

    from app.server import host_certs

    ca = keygen(tmp_path / "ca")
    key = keygen(tmp_path / "host")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-h", "-I", "h", "-n", "sftp.example", f"{key}.pub"],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    blob = base64.b64decode(Path(f"{key}-cert.pub").read_text().split()[1])
    ca_blob = base64.b64decode(public(ca).split()[1])
    cert = host_certs.parse(blob)
    host_certs.check(cert, authorities=(ca_blob,), revoked=frozenset(), host="SFTP.example", now=cert.valid_after + 1)
    # The same certificate, its principal changed after signing.
    forged = host_certs.parse(blob.replace(b"sftp.example", b"evil.example"))
    with pytest.raises(host_certs.CertificateError, match="CA signature does not verify"):
        host_certs.check(
            forged, authorities=(ca_blob,), revoked=frozenset(), host="evil.example", now=cert.valid_after + 1
        )
