"""DECRYPT=gpg against real GnuPG: keys made by a fixture, files encrypted and signed by gpg itself."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from app import interrupt
from app.config import Settings, load_settings
from app.errors import EXIT_TRANSFER, ConfigError, DecryptError, Interrupted
from app.storage import decrypt as decrypt_module
from app.storage.decrypt import Decrypted, Status, judge, open_keyring, output_name

PASSPHRASE = "gpg-Pp93-never-shown"


def _ensure_gpg() -> None:
    if shutil.which("gpg") is None:
        subprocess.run(["apt-get", "update"], check=False)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "gnupg"], check=False)
    if shutil.which("gpg") is None:
        pytest.fail("GnuPG (gpg) is not installed; `apt-get install gnupg`")


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args],
        input=data,
        capture_output=True,
        check=True,
    )
    return result.stdout


def _fingerprint(home: Path) -> str:
    listing = _gpg(home, "--with-colons", "--list-keys").decode()
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def _make_key(home: Path, uid: str, passphrase: str = "") -> str:
    """A primary ed25519 signing key with a cv25519 encryption subkey (fast to generate)."""
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", passphrase, "--quick-gen-key", uid, "ed25519", "sign", "never")
    fpr = _fingerprint(home)
    _gpg(home, "--passphrase", passphrase, "--quick-add-key", fpr, "cv25519", "encr", "never")
    return fpr


@dataclass
class Keys:
    """Armored key files and fingerprints; ``sender`` holds everyone's public keys to encrypt and sign."""

    dir: Path
    sender_home: Path
    recipient: str  # no passphrase
    recipient_secret: Path
    protected: str  # passphrase-protected
    protected_secret: Path
    signer: str  # an allowed signer (its secret key in sender_home)
    signer_public: Path
    stranger: str  # another signer, whose public key the job also has
    stranger_public: Path
    other: str  # a recipient whose secret key the job does not have

    def encrypt(self, data: bytes, to: str, sign_with: str | None = None, armor: bool = False) -> bytes:
        args = ["--trust-model", "always", "--recipient", to, "--output", "-"]
        if armor:
            args.append("--armor")
        if sign_with:
            args += ["--local-user", sign_with, "--sign"]
        return _gpg(self.sender_home, *args, "--encrypt", data=data)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    yield from make_keys(tmp_path_factory)


def make_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """The keys of ``keys``, for another module's fixture (whose ``keys`` are SSH keys)."""
    _ensure_gpg()
    d = tmp_path_factory.mktemp("gpg")
    homes = {name: d / name for name in ("r", "p", "s", "x", "o", "send")}
    recipient = _make_key(homes["r"], "Recipient <r@example.com>")
    protected = _make_key(homes["p"], "Protected <p@example.com>", PASSPHRASE)
    signer = _make_key(homes["s"], "Partner <s@example.com>")
    stranger = _make_key(homes["x"], "Stranger <x@example.com>")
    other = _make_key(homes["o"], "Other <o@example.com>")
    homes["send"].mkdir(mode=0o700)
    files = {}
    for name, fpr in (("r", recipient), ("p", protected), ("s", signer), ("x", stranger), ("o", other)):
        public = d / f"{name}.pub.asc"
        public.write_bytes(_gpg(homes[name], "--armor", "--export", fpr))
        _gpg(homes["send"], "--import", str(public))
        files[name] = public
    for name, fpr in (("s", signer), ("x", stranger)):
        secret = _gpg(homes[name], "--armor", "--export-secret-keys", fpr)
        _gpg(homes["send"], "--import", data=secret)
    recipient_secret = d / "recipient.sec.asc"
    recipient_secret.write_bytes(_gpg(homes["r"], "--armor", "--export-secret-keys", recipient))
    protected_secret = d / "protected.sec.asc"
    protected_secret.write_bytes(
        _gpg(homes["p"], "--passphrase", PASSPHRASE, "--armor", "--export-secret-keys", protected)
    )
    yield Keys(
        dir=d,
        sender_home=homes["send"],
        recipient=recipient,
        recipient_secret=recipient_secret,
        protected=protected,
        protected_secret=protected_secret,
        signer=signer,
        signer_public=files["s"],
        stranger=stranger,
        stranger_public=files["x"],
        other=other,
    )
    for home in homes.values():
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def _settings(tmp_path: Path, **extra: str) -> Settings:
    env = {
        "SFTP_HOST": "sftp.example.com",
        "SFTP_USER": "ipi",
        "SFTP_PASS": "pw",
        "LOCAL_DIR": str(tmp_path / "local"),
        "SERVER_DIR": str(tmp_path / "server"),
        "LOG_FILE": str(tmp_path / "logs" / "job.log"),
        "LAST_FILE_RECORD": str(tmp_path / "state" / "last_file.txt"),
        "DECRYPT": "gpg",
        **extra,
    }
    return load_settings(env)


def _key_file(tmp_path: Path, *parts: Path) -> Path:
    """GPG_PRIVATE_KEY_FILE: the secret key plus the allowed signers' public keys, concatenated."""
    path = tmp_path / "job.key.asc"
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    return path


_SHORT_LINK = "short-gnupg-parent"


def short_dir(tmp_path: Path) -> Path:
    """A directory for GnuPG homes whose path is short enough for gpg-agent's sockets
    (pytest's tmp_path under xdist is not): one per test, found through a link in tmp_path."""
    link = tmp_path / _SHORT_LINK
    if not link.is_symlink():
        link.symlink_to(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    return link.resolve()


@pytest.fixture(autouse=True)
def _remove_short_dir(tmp_path: Path) -> Iterator[None]:
    yield
    link = tmp_path / _SHORT_LINK
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)


def _decrypt(settings: Settings, tmp_path: Path, name: str, ciphertext: bytes) -> Decrypted:
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    source = local / name
    source.write_bytes(ciphertext)
    final = local / (output_name(name, settings.decrypt_suffixes) or name)
    with open_keyring(settings, parent=short_dir(tmp_path)) as keyring:
        return keyring.decrypt(source, final)


def _refused(settings: Settings, tmp_path: Path, ciphertext: bytes) -> DecryptError:
    with pytest.raises(DecryptError) as info:
        _decrypt(settings, tmp_path, "20250101.IPI.gpg", ciphertext)
    local = tmp_path / "local"
    # The plaintext's temp file is gone; the encrypted original stays for inspection.
    assert sorted(p.name for p in local.iterdir()) == ["20250101.IPI.gpg"]
    assert info.value.exit_code == EXIT_TRANSFER
    return info.value


# -- decryption ---------------------------------------------------------------


def test_encrypted_file_decrypts_to_the_name_without_suffix(keys: Keys, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))

    result = _decrypt(settings, tmp_path, "20250101.IPI.gpg", keys.encrypt(data, keys.recipient))

    assert result.final == tmp_path / "local" / "20250101.IPI"
    assert result.temp.parent == result.final.parent and result.temp.name.startswith(".")
    assert result.temp.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert result.signer is None
    assert not result.final.exists()  # the caller publishes it


def test_armored_file_decrypts(keys: Keys, tmp_path: Path) -> None:
    data = b"header;value\n" * 1000
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))

    result = _decrypt(settings, tmp_path, "20250101.IPI.ASC", keys.encrypt(data, keys.recipient, armor=True))

    assert result.final.name == "20250101.IPI"
    assert result.temp.read_bytes() == data


def test_signed_by_an_allowed_signer_is_accepted(keys: Keys, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    key_file = _key_file(tmp_path, keys.recipient_secret, keys.signer_public)
    spaced = " ".join(keys.signer[i : i + 4] for i in range(0, 40, 4)).lower()
    settings = _settings(
        tmp_path, GPG_PRIVATE_KEY_FILE=str(key_file), GPG_REQUIRE_SIGNER=f"{keys.stranger[:39]}0, {spaced}"
    )

    result = _decrypt(settings, tmp_path, "20250101.IPI.gpg", keys.encrypt(data, keys.recipient, keys.signer))

    assert result.temp.read_bytes() == data
    assert result.signer == keys.signer


def test_signed_by_another_key_is_refused_when_a_signer_is_required(keys: Keys, tmp_path: Path) -> None:
    key_file = _key_file(tmp_path, keys.recipient_secret, keys.signer_public, keys.stranger_public)
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(key_file), GPG_REQUIRE_SIGNER=keys.signer)

    error = _refused(settings, tmp_path, keys.encrypt(b"forged", keys.recipient, keys.stranger))

    assert error.reason == "NO_GOOD_SIGNATURE"
    assert "GPG_REQUIRE_SIGNER" in str(error)


def test_signed_by_an_unknown_key_is_refused_when_a_signer_is_required(keys: Keys, tmp_path: Path) -> None:
    key_file = _key_file(tmp_path, keys.recipient_secret, keys.signer_public)
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(key_file), GPG_REQUIRE_SIGNER=keys.signer)

    error = _refused(settings, tmp_path, keys.encrypt(b"forged", keys.recipient, keys.stranger))

    assert error.reason == "NO_PUBKEY"


def test_unsigned_file_is_refused_when_a_signer_is_required(keys: Keys, tmp_path: Path) -> None:
    key_file = _key_file(tmp_path, keys.recipient_secret, keys.signer_public)
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(key_file), GPG_REQUIRE_SIGNER=keys.signer)

    error = _refused(settings, tmp_path, keys.encrypt(b"unsigned", keys.recipient))

    assert error.reason == "NO_GOOD_SIGNATURE"


def test_signature_by_an_unknown_key_is_no_obstacle_when_no_signer_is_required(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))

    result = _decrypt(settings, tmp_path, "x.IPI.pgp", keys.encrypt(b"signed", keys.recipient, keys.stranger))

    assert result.temp.read_bytes() == b"signed"


def test_corrupted_ciphertext_is_refused_and_its_plaintext_removed(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))
    ciphertext = bytearray(keys.encrypt(os.urandom(2 * 1024 * 1024), keys.recipient))
    ciphertext[len(ciphertext) // 2] ^= 0xFF

    error = _refused(settings, tmp_path, bytes(ciphertext))

    assert error.reason == "DECRYPTION_INCOMPLETE"


def test_truncated_ciphertext_is_refused(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))
    ciphertext = keys.encrypt(os.urandom(500_000), keys.recipient)

    _refused(settings, tmp_path, ciphertext[: len(ciphertext) - 1000])


def test_file_encrypted_to_another_key_is_refused(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))

    error = _refused(settings, tmp_path, keys.encrypt(b"not for us", keys.other))

    assert error.reason == "NO_SECKEY"


def test_a_file_that_is_not_openpgp_is_refused(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))

    error = _refused(settings, tmp_path, b"plain text, not encrypted\n")

    assert error.reason == "NODATA"


def test_a_stop_request_ends_decryption_and_removes_the_plaintext(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))
    ciphertext = keys.encrypt(os.urandom(4 * 1024 * 1024), keys.recipient)
    monkeypatch.setitem(interrupt._state, "signum", signal.SIGTERM)

    with pytest.raises(Interrupted) as info:
        _decrypt(settings, tmp_path, "20250101.IPI.gpg", ciphertext)

    assert info.value.exit_code == 143
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["20250101.IPI.gpg"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("sftp-ipi-gpg-")] == []


# -- decompression bombs ------------------------------------------------------


def _bomb(keys: Keys, plaintext_size: int) -> bytes:
    """Zeros, which gpg compresses (ZLIB by default) a thousandfold before encrypting them."""
    return keys.encrypt(bytes(plaintext_size), keys.recipient)


def test_a_decompression_bomb_is_stopped_at_the_ratio_limit_and_nothing_of_it_kept(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))
    ciphertext = _bomb(keys, 64 * 1024 * 1024)
    assert len(ciphertext) * 500 < 64 * 1024 * 1024, "gpg did not compress: the test would prove nothing"
    largest = 0
    real_write_all = decrypt_module.write_all

    def measuring(fd: int, data: bytes) -> None:
        nonlocal largest
        real_write_all(fd, data)
        largest = max(largest, os.fstat(fd).st_size)

    monkeypatch.setattr(decrypt_module, "write_all", measuring)

    error = _refused(settings, tmp_path, ciphertext)

    assert settings.decrypt_max_ratio == 100 and settings.decrypt_max_size == 0
    assert error.reason == "PLAINTEXT_TOO_LARGE"
    assert f"from {len(ciphertext)} encrypted bytes, a ratio over" in str(error)
    assert "DECRYPT_MAX_RATIO=100" in str(error)
    # Stopped as soon as the limit was passed: never more than the limit on disk.
    limit = max(100 * len(ciphertext), decrypt_module.RATIO_FLOOR)
    assert 0 < largest <= limit


def test_decrypt_max_size_bounds_the_plaintext_whatever_the_ratio(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret), DECRYPT_MAX_RATIO="0", DECRYPT_MAX_SIZE="2M"
    )
    assert settings.decrypt_max_size == 2 * 1024 * 1024

    error = _refused(settings, tmp_path, keys.encrypt(os.urandom(3 * 1024 * 1024), keys.recipient))

    assert error.reason == "PLAINTEXT_TOO_LARGE"
    assert "passed 2097152 bytes (DECRYPT_MAX_SIZE=2097152)" in str(error)


def test_small_files_and_files_within_the_limits_decrypt(keys: Keys, tmp_path: Path) -> None:
    # 1 MiB of zeros is far beyond 100:1, but under the floor that is always allowed.
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret), DECRYPT_MAX_SIZE="4M")
    small = _decrypt(settings, tmp_path, "a.IPI.gpg", _bomb(keys, 1024 * 1024))
    assert small.size == 1024 * 1024
    data = os.urandom(3 * 1024 * 1024)
    assert _decrypt(settings, tmp_path, "b.IPI.gpg", keys.encrypt(data, keys.recipient)).temp.read_bytes() == data


def test_plaintext_limit_settings_are_checked(tmp_path: Path, keys: Keys) -> None:
    key = str(keys.recipient_secret)
    with pytest.raises(ConfigError, match="DECRYPT_MAX_SIZE='lots' is not a size"):
        _settings(tmp_path, GPG_PRIVATE_KEY_FILE=key, DECRYPT_MAX_SIZE="lots")
    with pytest.raises(ConfigError, match="DECRYPT_MAX_RATIO"):
        _settings(tmp_path, GPG_PRIVATE_KEY_FILE=key, DECRYPT_MAX_RATIO="-1")


# -- passphrases --------------------------------------------------------------


def test_protected_key_decrypts_with_the_passphrase_file(keys: Keys, tmp_path: Path) -> None:
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    settings = _settings(
        tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.protected_secret), GPG_PASSPHRASE_FILE=str(passphrase_file)
    )

    result = _decrypt(settings, tmp_path, "a.IPI.gpg", keys.encrypt(b"protected", keys.protected))

    assert result.temp.read_bytes() == b"protected"


def test_protected_key_without_a_passphrase_is_refused(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.protected_secret))

    error = _refused(settings, tmp_path, keys.encrypt(b"protected", keys.protected))

    assert error.reason == "NEED_PASSPHRASE"
    assert "GPG_PASSPHRASE_FILE" in str(error)


def test_wrong_passphrase_is_refused(keys: Keys, tmp_path: Path) -> None:
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text("not-the-passphrase")
    settings = _settings(
        tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.protected_secret), GPG_PASSPHRASE_FILE=str(passphrase_file)
    )

    error = _refused(settings, tmp_path, keys.encrypt(b"protected", keys.protected))

    assert error.reason == "DECRYPTION_FAILED"
    assert "wrong passphrase" in str(error)


def test_passphrase_is_in_no_argv_environment_or_log(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE)
    settings = _settings(
        tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.protected_secret), GPG_PASSPHRASE_FILE=str(passphrase_file)
    )
    seen: list[tuple[bytes, bytes]] = []
    real_popen = subprocess.Popen

    def spy(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # What becomes /proc/<pid>/cmdline and /proc/<pid>/environ, readable by others on the host.
        env = kwargs.get("env")
        environ = os.environ if env is None else env
        seen.append(("\0".join(argv).encode(), "\0".join(f"{k}={v}" for k, v in environ.items()).encode()))
        return real_popen(argv, **kwargs)

    good, bad = keys.encrypt(b"protected", keys.protected), keys.encrypt(b"other", keys.other)
    monkeypatch.setattr(decrypt_module.subprocess, "Popen", spy)
    messages: list[str] = []
    sink = logger.add(messages.append, level="TRACE")
    try:
        _decrypt(settings, tmp_path, "a.IPI.gpg", good)
        with pytest.raises(DecryptError) as info:
            _decrypt(settings, tmp_path, "b.IPI.gpg", bad)
    finally:
        logger.remove(sink)

    assert [Path(cmdline.split(b"\0")[0].decode()).name for cmdline, _ in seen] == ["gpg", "gpg", "gpgconf"] * 2
    secret = PASSPHRASE.encode()
    assert not any(secret in cmdline or secret in environ for cmdline, environ in seen)
    assert not any(b"SFTP_PASS" in environ for _, environ in seen)
    assert PASSPHRASE not in "".join(messages) + str(info.value)
    assert PASSPHRASE not in repr(settings)
    assert PASSPHRASE in settings.secrets


# -- the private GnuPG home ---------------------------------------------------


def test_gnupg_home_is_private_and_removed_after_the_run(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))

    parent = short_dir(tmp_path)
    with open_keyring(settings, parent=parent) as keyring:
        assert keyring.home.parent == parent
        assert keyring.home.stat().st_mode & 0o777 == 0o700
        assert (keyring.home / "private-keys-v1.d").is_dir()
        home = keyring.home
        assert _agents(home), "gpg started no agent: the check below would prove nothing"

    assert not home.exists()
    assert _agents(home) == []


def test_gnupg_home_is_never_readable_by_others_whatever_the_umask(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))
    old = os.umask(0)
    try:
        with open_keyring(settings, parent=short_dir(tmp_path)) as keyring:
            keyring.decrypt(_local_file(tmp_path, keys), tmp_path / "local" / "a.IPI").temp.unlink()
            opened = [keyring.home, *keyring.home.rglob("*")]
            modes = {str(p.relative_to(keyring.home)): p.lstat().st_mode & 0o777 for p in opened}
    finally:
        os.umask(old)

    assert modes["."] == 0o700
    assert any(name.startswith("private-keys-v1.d/") for name in modes), modes  # the secret key is in there
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}


def _local_file(tmp_path: Path, keys: Keys) -> Path:
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    source = local / "a.IPI.gpg"
    source.write_bytes(keys.encrypt(b"rows\n", keys.recipient))
    return source


_HOLD_A_KEYRING = """
import sys, time
from pathlib import Path
from app.config import load_settings
from app.storage.decrypt import open_keyring
settings = load_settings({"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p", "DECRYPT": "gpg",
    "LOCAL_DIR": sys.argv[2] + "/l", "SERVER_DIR": sys.argv[2] + "/s", "LOG_FILE": sys.argv[2] + "/j.log",
    "LAST_FILE_RECORD": sys.argv[2] + "/st/r", "GPG_PRIVATE_KEY_FILE": sys.argv[3]})
with open_keyring(settings, parent=Path(sys.argv[1])) as keyring:
    print(keyring.home, flush=True)
    time.sleep(600)
"""


def test_a_killed_runs_gnupg_home_and_agent_are_swept_and_a_live_ones_left_alone(keys: Keys, tmp_path: Path) -> None:
    parent = short_dir(tmp_path)
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))
    killed = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_KEYRING, str(parent), str(tmp_path), str(keys.recipient_secret)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert killed.stdout is not None
    stale = Path(killed.stdout.readline().strip())
    assert _agents(stale), "gpg started no agent: the check below would prove nothing"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (stale / "private-keys-v1.d").is_dir()  # what kill -9 leaves: the key and its agent

    with open_keyring(settings, parent=parent) as live:
        swept = decrypt_module.sweep_stale_homes(parent)

        assert swept == [stale]
        assert not stale.exists()
        assert _wait_for_no_agent(stale)
        assert live.home.is_dir() and _agents(live.home), "a live run's home and agent are left alone"
        assert decrypt_module.sweep_stale_homes(parent) == []


def _wait_for_no_agent(home: Path) -> bool:
    deadline = time.monotonic() + 10
    while _agents(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _agents(home)


def test_the_sweep_leaves_what_is_not_an_abandoned_home_of_this_job_alone(tmp_path: Path) -> None:
    parent = short_dir(tmp_path)
    young = parent / (decrypt_module.HOME_PREFIX + "beingmade")
    young.mkdir(mode=0o700)  # mkdtemp done, its lock not yet taken
    other = parent / "sftp-ipi-other"
    other.mkdir()
    (parent / (decrypt_module.HOME_PREFIX + "afile")).write_text("not a directory")
    old = parent / (decrypt_module.HOME_PREFIX + "oldversion")
    old.mkdir(mode=0o700)
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    assert decrypt_module.sweep_stale_homes(parent) == [old]
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        [young.name, other.name, decrypt_module.HOME_PREFIX + "afile"]
    )


def _agents(home: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {home}"], capture_output=True, text=True)
    return found.stdout.split()


def test_key_file_without_a_secret_key_is_a_config_error(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.signer_public))

    with (
        pytest.raises(ConfigError, match=r"GPG_PRIVATE_KEY_FILE=.*no usable armored secret key"),
        open_keyring(settings, parent=short_dir(tmp_path)),
    ):
        pass
    assert [p.name for p in short_dir(tmp_path).iterdir() if p.name.startswith("sftp-ipi-gpg-")] == []


def test_a_gnupg_home_too_long_for_the_agent_socket_is_named(keys: Keys, tmp_path: Path) -> None:
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret))
    deep = tmp_path / ("d" * 100)
    deep.mkdir()

    with (
        pytest.raises(ConfigError, match=r"too long for gpg-agent's socket S\.gpg-agent\.browser.*TMPDIR"),
        open_keyring(settings, parent=deep),
    ):
        pass
    assert list(deep.iterdir()) == []


# -- settings -----------------------------------------------------------------


def test_decrypt_gpg_requires_an_existing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DECRYPT=gpg: set GPG_PRIVATE_KEY_FILE"):
        _settings(tmp_path)
    with pytest.raises(ConfigError, match=r"GPG_PRIVATE_KEY_FILE=.*: no such file"):
        _settings(tmp_path, GPG_PRIVATE_KEY_FILE=str(tmp_path / "missing.asc"))


def test_missing_passphrase_file_is_named(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"GPG_PASSPHRASE_FILE=.*: no such file"):
        _settings(
            tmp_path,
            GPG_PRIVATE_KEY_FILE=str(keys.recipient_secret),
            GPG_PASSPHRASE_FILE=str(tmp_path / "missing"),
        )


def test_signer_fingerprints_are_normalised_and_checked(keys: Keys, tmp_path: Path) -> None:
    key = str(keys.recipient_secret)
    spaced = "aaaa bbbb cccc dddd eeee ffff 0000 1111 2222 3333"
    settings = _settings(tmp_path, GPG_PRIVATE_KEY_FILE=key, GPG_REQUIRE_SIGNER=f" {spaced} ,")
    assert settings.gpg_require_signer == ("AAAABBBBCCCCDDDDEEEEFFFF0000111122223333",)
    with pytest.raises(ConfigError, match="GPG_REQUIRE_SIGNER: 'ABCD' is not an OpenPGP fingerprint"):
        _settings(tmp_path, GPG_PRIVATE_KEY_FILE=key, GPG_REQUIRE_SIGNER="ABCD")


def test_decrypt_defaults_to_none_and_suffixes_parse(tmp_path: Path) -> None:
    settings = _settings(tmp_path, DECRYPT="none")
    assert settings.decrypt == "none"
    assert settings.decrypt_suffixes == (".gpg", ".pgp", ".asc")
    with pytest.raises(ConfigError, match="DECRYPT='pgp' is not one of: none, gpg"):
        _settings(tmp_path, DECRYPT="pgp")
    with pytest.raises(ConfigError, match="DECRYPT_SUFFIXES: 'gpg' is not a name ending"):
        _settings(tmp_path, DECRYPT="none", DECRYPT_SUFFIXES=".pgp,gpg")


# -- pure parts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20250101.IPI.gpg", "20250101.IPI"),
        ("20250101.IPI.GPG", "20250101.IPI"),
        ("20250101.IPI.asc", "20250101.IPI"),
        ("20250101.IPI", None),
        ("20250101.gpg.IPI", None),
        (".gpg", None),
    ],
)
def test_output_name_strips_one_decryption_suffix(name: str, expected: str | None) -> None:
    assert output_name(name, (".gpg", ".pgp", ".asc")) == expected


def _status(*lines: str) -> Status:
    return Status.parse("".join(f"[GNUPG:] {line}\n" for line in lines).encode())


def test_a_bad_signature_is_refused_even_when_no_signer_is_required() -> None:
    status = _status("DECRYPTION_OKAY", "NEWSIG", "BADSIG 2568F13325F2FEFD Partner", "END_DECRYPTION")
    assert judge(status, 1, ()) == ("BADSIG", None)


def test_an_expired_or_revoked_signers_signature_is_not_good() -> None:
    fpr = "55001CB5B7C256D9F8A60A802568F13325F2FEFD"
    for verdict in ("EXPKEYSIG", "REVKEYSIG"):
        status = _status("DECRYPTION_OKAY", "NEWSIG", f"{verdict} 2568F13325F2FEFD P", f"VALIDSIG {fpr} x")
        assert judge(status, 0, (fpr,)) == ("NO_GOOD_SIGNATURE", None)


def test_human_text_that_looks_like_a_status_is_ignored() -> None:
    status = Status.parse(b"gpg: [GNUPG:] DECRYPTION_OKAY\n")
    assert judge(status, 0, ())[0] == "DECRYPTION_INCOMPLETE"


@given(raw=st.binary(max_size=2000), returncode=st.integers(min_value=0, max_value=255))
def test_any_status_output_gives_a_verdict_and_never_a_success_without_decryption_okay(
    raw: bytes, returncode: int
) -> None:
    status = Status.parse(raw)
    reason, _ = judge(status, returncode, ("55001CB5B7C256D9F8A60A802568F13325F2FEFD",))
    if not status.has("DECRYPTION_OKAY"):
        assert reason is not None
