"""Peak memory of DECRYPT=gpg: decrypt one large file and report the Python process's peak RSS.

python bench/decrypt_rss.py [--size-mib 256]

Keys (ed25519/cv25519) are made in a throw-away GNUPGHOME; the plaintext is
random, written and encrypted in a scratch directory that is removed at the
end. The job's process must stay flat whatever the size: gpg streams, and
app/storage/decrypt.py reads its output in blocks. gpg's own peak is shown too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import load_settings
from app.storage.decrypt import open_keyring

MiB = 1024 * 1024


def _gpg(home: Path, *args: str) -> bytes:
    command = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args]
    return subprocess.run(command, check=True, capture_output=True).stdout


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    size = parser.parse_args().size_mib * MiB

    scratch = Path(tempfile.mkdtemp(prefix="decrypt-rss-"))
    try:
        home = scratch / "sender"
        home.mkdir(mode=0o700)
        _gpg(home, "--passphrase", "", "--quick-gen-key", "Bench <bench@example.com>", "ed25519", "sign", "never")
        listing = _gpg(home, "--with-colons", "--list-keys").decode()
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        _gpg(home, "--passphrase", "", "--quick-add-key", fpr, "cv25519", "encr", "never")
        key_file = scratch / "key.asc"
        key_file.write_bytes(_gpg(home, "--armor", "--export-secret-keys", fpr))

        plain = scratch / "plain"
        digest = hashlib.sha256()
        with open(plain, "wb") as out:
            for _ in range(size // MiB):
                block = os.urandom(MiB)
                digest.update(block)
                out.write(block)
        local = scratch / "local"
        local.mkdir()
        source = local / "20250101.IPI.gpg"
        _gpg(home, "--trust-model", "always", "--compress-algo", "none", "-r", fpr, "-o", str(source), "-e", str(plain))
        plain.unlink()
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)

        settings = load_settings(
            {
                "SFTP_HOST": "bench",
                "SFTP_USER": "bench",
                "SFTP_PASS": "unused",
                "LOCAL_DIR": str(local),
                "SERVER_DIR": str(scratch / "server"),
                "LOG_FILE": str(scratch / "job.log"),
                "LAST_FILE_RECORD": str(scratch / "last_file.txt"),
                "DECRYPT": "gpg",
                "GPG_PRIVATE_KEY_FILE": str(key_file),
            }
        )
        before = _peak_mib(resource.RUSAGE_SELF)
        started = time.monotonic()
        with open_keyring(settings, parent=scratch) as keyring:
            result = keyring.decrypt(source, local / "20250101.IPI")
        seconds = time.monotonic() - started
        assert result.sha256 == digest.hexdigest() and result.size == size, "plaintext differs"
        print(f"decrypted {size // MiB} MiB in {seconds:.1f} s ({size / MiB / seconds:.0f} MiB/s)")
        print(f"python peak RSS: {_peak_mib(resource.RUSAGE_SELF):.1f} MiB (before decrypting: {before:.1f} MiB)")
        print(f"largest child (gpg) peak RSS: {_peak_mib(resource.RUSAGE_CHILDREN):.1f} MiB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
