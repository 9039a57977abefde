"""Settings: read once from the environment (and a dotenv file), validated up front.

Every setting is an environment variable whose name is the upper-cased field name.
Each field carries its default and a one-line doc in its metadata; ``--help`` and
``.env.example`` are both derived from them (a test keeps the example in step).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from app.endpoints import parse_jump, parse_proxy
from app.errors import ConfigError
from app.urls import split_credentials

HOST_KEY_POLICIES = ("strict", "accept-new")
SSH_ALGORITHMS = ("modern", "compat")
ORDERINGS = ("name-date", "mtime", "name")
SELECT_MODES = ("next", "latest", "all")
LOG_FORMATS = ("text", "json")
PUBLISH_METHODS = ("auto", "copy", "reflink", "hardlink")
NOTIFY_ON = ("failure", "always")
SMTP_SECURITY = ("starttls", "tls", "none")
# The port of SMTP over implicit TLS (RFC 8314 "submissions").
SMTPS_PORT = 465
LATE_POLICIES = ("warn", "fetch", "ignore")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
DECRYPT_METHODS = ("none", "gpg")
REMOTE_AFTER_ACTIONS = ("keep", "delete", "move")
VERIFY_SOURCE_POLICIES = ("auto", "required", "off")
# CHECKSUM_FILES=auto: per-file checksums (strongest first, either case of suffix), then manifests.
CHECKSUM_AUTO = (
    *(
        f"{{name}}.{suffix}"
        for algorithm in ("sha512", "sha256", "sha1", "md5")
        for suffix in (algorithm, algorithm.upper())
    ),
    "SHA512SUMS",
    "SHA256SUMS",
    "SHA1SUMS",
    "MD5SUMS",
    "CHECKSUMS",
)
# READY_MARKER=checksum: the file's checksum file doubles as its marker.
READY_MARKER_CHECKSUM = "checksum"

MiB = 1024 * 1024


def _setting(default: Any, doc: str, *, secret: bool = False, example: str | None = None) -> Any:
    """A dataclass field that documents itself; ``example`` overrides the shown default."""
    if example is not None:
        shown = example
    elif isinstance(default, bool):
        shown = str(default).lower()
    else:
        shown = "" if default is None else str(default)
    return field(
        default=default,
        repr=not secret,
        metadata={"doc": doc, "sensitive": secret, "shown": shown},
    )


def _required(doc: str) -> Any:
    return field(metadata={"doc": doc, "sensitive": False, "shown": "", "required": True})


class _StateLayout:
    """Where the local state sits: shared by Settings and StateSettings."""

    last_file_record: Path
    ledger_file: Path | None
    report_file: Path | None
    file_mode: int

    @property
    def umask(self) -> int:
        """The umask that gives files FILE_MODE and directories the same bits plus search."""
        dir_mode = self.file_mode | ((self.file_mode & 0o444) >> 2)
        return 0o777 & ~dir_mode

    @property
    def ledger_path(self) -> Path:
        if self.ledger_file is not None:
            return self.ledger_file
        return self.last_file_record.parent / "completed_files.jsonl"

    @property
    def lock_path(self) -> Path:
        return self.last_file_record.with_name(self.last_file_record.name + ".lock")

    @property
    def report_path(self) -> Path:
        if self.report_file is not None:
            return self.report_file
        return self.last_file_record.parent / "run_report.json"

    @property
    def observations_path(self) -> Path:
        """What the job saw of each listed, undelivered file (app/planning.py): the last listing's names."""
        return self.last_file_record.parent / "seen_files.json"


@dataclass(frozen=True)
class Settings(_StateLayout):
    """Everything the job needs to know, validated. Secrets are left out of ``repr``."""

    sftp_host: str = _required("SFTP server host name or address.")
    sftp_user: str = _required("Login user name.")
    sftp_port: int = _setting(22, "SFTP server TCP port.")
    sftp_pass: str | None = _setting(None, "Password (prefer SFTP_PASS_FILE).", secret=True)
    sftp_pass_file: Path | None = _setting(
        None, "File holding the password, e.g. a mounted secret; one trailing newline is stripped."
    )
    sftp_key_file: Path | None = _setting(None, "Private key file (OpenSSH format) for public-key login.")
    sftp_key_passphrase: str | None = _setting(
        None, "Passphrase of SFTP_KEY_FILE, if it is encrypted (prefer SFTP_KEY_PASSPHRASE_FILE).", secret=True
    )
    sftp_key_passphrase_file: Path | None = _setting(
        None, "File holding the passphrase of SFTP_KEY_FILE, e.g. a mounted secret; one trailing newline is stripped."
    )
    sftp_cert_file: Path | None = _setting(
        None, "OpenSSH user certificate (*-cert.pub) signed for SFTP_KEY_FILE; offered with that key."
    )
    sftp_known_hosts: Path = _setting(
        Path("~/.ssh/known_hosts"),
        "OpenSSH known_hosts file; [host]:port, hashed entries and host patterns are honoured, @revoked keys refused.",
    )
    sftp_host_key_policy: str = _setting(
        "strict",
        "strict: refuse unknown or mismatching host keys. accept-new: trust and record an unknown key"
        " on first use; a mismatch is still refused.",
    )
    sftp_host_key_fingerprint: tuple[str, ...] = _setting(
        (),
        "Pin the server's key: SHA256:... as `ssh-keygen -lf` prints it (several, comma-separated, during a"
        " key rotation). When set, the key must match it, known_hosts or not.",
        example="",
    )
    sftp_use_agent: bool = _setting(False, "Also offer the keys of a running ssh-agent (SSH_AUTH_SOCK).")
    sftp_jump_host: str | None = _setting(
        None,
        "Jump host, [user@]host[:port] as OpenSSH's ProxyJump: the session runs through its direct-tcpip"
        " channel. Its host key is checked against SFTP_KNOWN_HOSTS like the server's.",
    )
    sftp_jump_user: str | None = _setting(
        None, "Login user on the jump host; default: the user in SFTP_JUMP_HOST, else SFTP_USER."
    )
    sftp_jump_key_file: Path | None = _setting(None, "Private key for the jump host; default: SFTP_KEY_FILE.")
    sftp_jump_pass_file: Path | None = _setting(
        None, "File holding the jump host's password; default: the server's password."
    )
    sftp_proxy: str | None = _setting(
        None,
        "Proxy for the first TCP connection: http://host:port (HTTP CONNECT) or socks5://host:port"
        " (socks5h:// is the same; host names are resolved by the proxy). user:pass@ in the URL works, with a warning.",
        secret=True,
    )
    sftp_proxy_pass_file: Path | None = _setting(
        None, "File holding the proxy password for the user named in SFTP_PROXY (user@host:port)."
    )
    ssh_algorithms: str = _setting(
        "modern",
        "modern: AEAD or CTR+SHA-2 ciphers, curve25519/ML-KEM/ECDH/DH-SHA-2 key exchange, SHA-2 host-key"
        " signatures only. compat: also the rest paramiko offers (CBC, 3DES, hmac-sha1, hmac-md5), with a warning.",
    )
    sftp_dir: str = _setting("", "Remote directory to pull from; empty means the login directory.")
    local_dir: Path = _setting(Path("./local_downloads"), "Where files are downloaded and verified.")
    server_dir: Path = _setting(Path("./synced_server"), "Where verified files are published atomically.")
    log_file: Path = _setting(Path("./logs/sftp_transfer.log"), "Log file (its directory is created).")
    last_file_record: Path = _setting(
        Path("./last_file.txt"), "Holds the name of the last completed file; the run lock sits beside it."
    )
    ledger_file: Path | None = _setting(
        None,
        "JSON-lines ledger of completed files.",
        example="completed_files.jsonl beside LAST_FILE_RECORD",
    )
    publish_method: str = _setting(
        "auto",
        "How files reach SERVER_DIR: auto (a copy-on-write clone where the file system can, else a copy),"
        " copy, reflink, or hardlink (opt-in: both names share one inode).",
    )
    file_pattern: str = _setting("*IPI*", "Glob matched against remote file names.")
    max_listing: int = _setting(
        100_000, "Most directory entries read from the server; a longer listing is refused as hostile."
    )
    file_mode: int = _setting(
        0o640, "Permissions (octal) of the files the job creates; directories get the matching 0750.", example="0640"
    )
    order_by: str = _setting(
        "name-date",
        "name-date: the YYYYMMDD date in the name (names without one are skipped), ties by name;"
        " mtime: modification time; name: the name itself.",
    )
    select_mode: str = _setting(
        "next",
        "next: the first due file after the last completed one; latest: only the newest due file;"
        " all: every due file, oldest first.",
    )
    min_file_age: int = _setting(
        60,
        "Seconds since a remote file's last modification before it is taken (it may still be written);"
        " without an mtime, or with one ahead of our clock, seconds it has been seen unchanged.",
    )
    date_pattern: str | None = _setting(
        None,
        "Regex with a named group 'date' capturing the YYYYMMDD of names with several 8-digit dates;"
        " unset, such names are skipped with a warning.",
    )
    late_files: str = _setting(
        "warn",
        "Files that appear behind the last completed file: warn (name them in log, report, status, metrics),"
        " fetch (download them once; the record does not move back), or ignore.",
    )
    chunk_size: int = _setting(
        2 * MiB,
        "Largest SFTP read request, in bytes; servers may serve less (OpenSSH: 255 KiB) and the job adapts.",
    )
    pipeline_depth: int = _setting(64, "Read requests kept in flight at once; hides the link's round trip.")
    concurrent_files: int = _setting(
        32,
        "Small files fetched at once over the one connection (opens, reads and re-stats overlap); 1 fetches"
        " one after another. Falls back to 1 by itself when the server refuses a second open file.",
    )
    ssh_window_size: int = _setting(
        16 * MiB, "SSH channel window in bytes; caps throughput near window / round-trip time."
    )
    ssh_rekey_bytes: int = _setting(
        512 * MiB, "Bytes after which SSH keys are renegotiated during a long transfer (paramiko's default)."
    )
    connect_timeout: int = _setting(30, "Seconds allowed for TCP connect, SSH handshake and login.")
    io_timeout: int = _setting(
        60, "Seconds without any transfer progress before the connection is dropped and resumed."
    )
    keepalive_interval: int = _setting(15, "Seconds between SSH keepalives (0 disables them).")
    resume_verify_bytes: int = _setting(
        MiB,
        "Bytes before the resume point re-read from the server and compared before resuming (with the first"
        " block and sampled blocks of the kept prefix; see docs/design.md).",
    )
    local_retention: int | None = _setting(
        None,
        "LOCAL_DIR copies of published files: keep; delete-after-publish; or a number of days after"
        " publication. Only files recorded in the ledger and present in SERVER_DIR are deleted.",
        example="keep",
    )
    stuck_after_runs: int = _setting(
        3,
        "A due file that failed the same way on this many runs in a row is named as stuck (log, run report,"
        " sftp_ipi_stuck_files) with the command that passes it (`sftp-ipi skip NAME --reason TEXT`); 0: never.",
    )
    retry_max_tries: int = _setting(7, "Attempts in a row without progress before the run gives up.")
    retry_max_time: int = _setting(1800, "Seconds without progress before the run gives up retrying.")
    retry_backoff_factor: float = _setting(
        5.0, "Seconds before the first retry; doubles per attempt, with full jitter."
    )
    report_file: Path | None = _setting(
        None, "JSON report of the last run, written atomically.", example="run_report.json beside LAST_FILE_RECORD"
    )
    metrics_pushgateway_url: str | None = _setting(
        None,
        "Prometheus Pushgateway to push run metrics to after every run, e.g. http://pushgateway:9091;"
        " user:password@ in it is sent as basic auth.",
        secret=True,
    )
    metrics_instance: str | None = _setting(
        None,
        "The feed's name: the 'instance' grouping label of pushed metrics and the 'feed' label"
        " of every metric, pushed or written; SFTP_HOST when unset.",
    )
    metrics_textfile: Path | None = _setting(
        None,
        "Also write the metrics here for node-exporter's textfile collector (a *.prom file);"
        " when it is a directory, the file sftp_ipi_<feed>.prom in it.",
    )
    strict_settings: bool = _setting(
        False,
        "true: a name that looks like a misspelt setting (in the env file or the environment)"
        " is a configuration error (exit 2), not a warning.",
    )
    metrics_schedule_seconds: int = _setting(
        900,
        "How often the job is scheduled, in seconds (the shipped timer and CronJob: 900);"
        " published in sftp_ipi_feed_info for per-feed alert thresholds.",
    )
    notify_webhook_url: str | None = _setting(
        None,
        "POST a JSON message (Slack- and Teams-compatible 'text') here when a run fails.",
        secret=True,
    )
    notify_on: str = _setting("failure", "failure: notify on failed runs only; always: after every run.")
    notify_timeout: int = _setting(10, "Seconds allowed for each notification.")
    notify_smtp_host: str | None = _setting(None, "SMTP server for e-mail alerts.")
    notify_smtp_port: int = _setting(587, "SMTP port; 465 when NOTIFY_SMTP_SECURITY=tls and this is unset.")
    notify_smtp_security: str = _setting(
        "starttls",
        "starttls: upgrade to TLS with STARTTLS, and send nothing if the server does not offer it;"
        " tls: TLS from the start (implicit TLS, port 465); none: no TLS, the login and the message"
        " go in the clear (warned on every use). Unset with NOTIFY_SMTP_PORT=465 means tls.",
    )
    notify_smtp_user: str | None = _setting(None, "SMTP login user, if the server wants one.")
    notify_smtp_pass_file: Path | None = _setting(None, "File holding the SMTP password.")
    notify_smtp_from: str | None = _setting(None, "Sender address of alert e-mails.")
    notify_smtp_to: tuple[str, ...] = _setting((), "Recipients of alert e-mails, comma-separated.", example="")
    log_level: str = _setting("INFO", f"Least severe level logged: {', '.join(LOG_LEVELS)}.")
    log_format: str = _setting("text", "text, or json (one JSON object per line, console and file).")
    checksum_files: tuple[str, ...] = _setting(
        CHECKSUM_AUTO,
        "Where the expected digest of NAME is published: auto (NAME.sha512, .sha256, .sha1, .md5, upper-case"
        " too, and SHA512SUMS, SHA256SUMS, SHA1SUMS, MD5SUMS, CHECKSUMS), off, or comma-separated names with"
        " {name} and {stem} (NAME without its last suffix), e.g. {name}.sha256,SHA256SUMS.",
        example="auto",
    )
    remote_hash_command: str | None = _setting(
        None,
        "Opt-in: a command such as sha256sum run as `<command> -- <path>` over SSH after each download to"
        " compare digests; needs a shell account and costs the server a read of the file.",
    )
    verify_source: str = _setting(
        "auto",
        "auto: prove each file by the strongest proof available (server digest, checksum file, command), else"
        " size and mtime; required: a file without such a proof fails; off: size and mtime only.",
    )
    ready_marker: str | None = _setting(
        None,
        "A file is due only once its marker is listed: a name with {name} or {stem}, e.g. {name}.done or"
        " {stem}.ok, or 'checksum' for its checksum file. Markers are never downloaded as data.",
    )
    # File lifecycle (issue 12): building blocks, wired into the run in a later step.
    decrypt: str = _setting(
        "none",
        "none, or gpg: decrypt downloaded files whose name ends in one of DECRYPT_SUFFIXES with GnuPG, and"
        " publish the plaintext under the name without the suffix; other names are published as they are.",
    )
    gpg_private_key_file: Path | None = _setting(
        None,
        "Armored OpenPGP secret key to decrypt with (a mounted secret); required with DECRYPT=gpg. Append the"
        " public keys of the signers named in GPG_REQUIRE_SIGNER to the same file.",
    )
    gpg_passphrase_file: Path | None = _setting(
        None, "File holding the passphrase of GPG_PRIVATE_KEY_FILE, if it has one; one trailing newline is stripped."
    )
    gpg_require_signer: tuple[str, ...] = _setting(
        (),
        "OpenPGP fingerprints (40 hex digits, comma-separated): a file must carry a good signature by one of"
        " them, else it is not published.",
        example="",
    )
    decrypt_suffixes: tuple[str, ...] = _setting(
        (".gpg", ".pgp", ".asc"),
        "Name endings (case-insensitive, comma-separated) of the files DECRYPT=gpg decrypts.",
        example=".gpg,.pgp,.asc",
    )
    decrypt_max_ratio: int = _setting(
        100,
        "Most bytes of plaintext per byte of an encrypted file (compressed OpenPGP data can expand a"
        " thousandfold: a decompression bomb); gpg is stopped past it and the file fails. Plaintext up to"
        " 1 MiB is always allowed; 0: no ratio limit.",
    )
    decrypt_max_size: int = _setting(
        0,
        "Most bytes of plaintext of one decrypted file, e.g. 512M, 10G (K, M, G are 1024, 1024^2, 1024^3);"
        " gpg is stopped past it and the file fails; 0: no limit but DECRYPT_MAX_RATIO.",
    )
    bandwidth_limit: int | None = _setting(
        None,
        "Most bytes per second the downloads may use on average, e.g. 500K, 10M, 1G (K, M, G are 1024,"
        " 1024^2, 1024^3, as in rclone); unset means unlimited.",
    )
    remote_after: str = _setting(
        "keep",
        "What happens to a delivered file on the server: keep it, delete it, or move it into"
        " REMOTE_ARCHIVE_DIR; a file changed since its download is left alone.",
    )
    remote_archive_dir: str | None = _setting(
        None, "Remote directory REMOTE_AFTER=move moves files into (it must exist); relative to SFTP_DIR."
    )
    remote_after_required: bool = _setting(
        False, "true: a failed REMOTE_AFTER action fails the run (exit 1); false: it is a warning only."
    )
    # Read from SFTP_JUMP_PASS_FILE and SFTP_PROXY_PASS_FILE during validation; not settings of their own.
    sftp_jump_pass: str | None = field(default=None, repr=False, metadata={"internal": True})
    sftp_proxy_pass: str | None = field(default=None, repr=False, metadata={"internal": True})
    # Read from NOTIFY_SMTP_PASS_FILE during validation; not a setting of its own.
    notify_smtp_pass: str | None = field(default=None, repr=False, metadata={"internal": True})
    # Read from GPG_PASSPHRASE_FILE during validation; not a setting of its own.
    gpg_passphrase: str | None = field(default=None, repr=False, metadata={"internal": True})

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in any output."""
        # The proxy URL only when it carries a password: without one, it is shown in messages as it is.
        proxy = self.sftp_proxy if self.sftp_proxy and split_credentials(self.sftp_proxy).password else None
        urls = tuple(u for u in (self.metrics_pushgateway_url, self.notify_webhook_url, proxy) if u)
        passwords = tuple(split_credentials(u).password for u in urls)
        candidates = (
            self.sftp_pass,
            self.sftp_jump_pass,
            self.sftp_proxy_pass,
            self.sftp_key_passphrase,
            self.notify_smtp_pass,
            self.gpg_passphrase,
            *urls,
            *passwords,
        )
        return tuple(s for s in candidates if s)


@dataclass(frozen=True)
class StateSettings(_StateLayout):
    """The settings of the commands that work on local state only (status, audit,
    refetch): no connection, no credentials, so none of those is required.

    Only the names and types are declared here; defaults, docs and parsers are
    Settings' own (load_state_settings reads them from there), and a test keeps
    the types in step.
    """

    local_dir: Path
    server_dir: Path
    log_file: Path
    last_file_record: Path
    ledger_file: Path | None
    report_file: Path | None
    file_mode: int
    order_by: str
    log_level: str
    log_format: str


def env_name(field_name: str) -> str:
    return field_name.upper()


@dataclass(frozen=True)
class SettingDoc:
    env: str
    default: str
    doc: str
    required: bool
    secret: bool


def setting_docs() -> list[SettingDoc]:
    """Every setting in declaration order, for --help and .env.example."""
    return [
        SettingDoc(
            env=env_name(f.name),
            default=f.metadata["shown"],
            doc=f.metadata["doc"],
            required=bool(f.metadata.get("required")),
            secret=f.metadata["sensitive"],
        )
        for f in fields(Settings)
        if not f.metadata.get("internal")
    ]


def _int(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            bound = f"between {minimum}{upper}" if maximum is not None else f"at least {minimum}"
            raise ConfigError(f"{name}={value} must be {bound}")
        return value

    return parse


def _float(minimum: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not value >= minimum:  # also rejects NaN
            raise ConfigError(f"{name}={raw} must be at least {minimum}")
        return value

    return parse


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
        return value

    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# base64 of a 32-byte SHA-256 digest, without padding, as OpenSSH prints it.
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not one of: true, false")


def _fingerprints(name: str, raw: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    for value in values:
        if not _FINGERPRINT.fullmatch(value):
            raise ConfigError(f"{name}: {value!r} is not a SHA256:... fingerprint as ssh-keygen -lf prints it")
    return values


def _octal_mode(name: str, raw: str) -> int:
    try:
        value = int(raw.strip(), 8)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an octal mode such as 0640") from None
    if not 0 <= value <= 0o777 or not value & 0o600 == 0o600:
        raise ConfigError(f"{name}={raw!r} must be at most 0777 and let the owner read and write (0600)")
    return value


def _url(name: str, raw: str) -> str:
    value = raw.strip()
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or any(c.isspace() for c in value):
        # The value may hold a token (webhook URLs do): name the setting, not the value.
        raise ConfigError(f"{name} must be an http:// or https:// URL")
    return value


def _address(name: str, raw: str) -> str:
    value = raw.strip()
    if "@" not in value or any(c.isspace() or ord(c) < 32 for c in value):
        raise ConfigError(f"{name}={raw!r} is not an e-mail address")
    return value


def _addresses(name: str, raw: str) -> tuple[str, ...]:
    return tuple(_address(name, part) for part in raw.split(",") if part.strip())


def _retention(name: str, raw: str) -> int | None:
    """None for keep, 0 for delete-after-publish, else whole days."""
    value = raw.strip().lower()
    if value == "keep":
        return None
    if value == "delete-after-publish":
        return 0
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ConfigError(f"{name}={raw!r} is not one of: keep, delete-after-publish, or a number of days (1 or more)")


def _path(name: str, raw: str) -> Path:
    if "\x00" in raw:
        raise ConfigError(f"{name} contains a NUL byte")
    return Path(raw).expanduser()


def _text(name: str, raw: str) -> str:
    return raw


def _pattern(name: str, raw: str) -> str:
    if "/" in raw:
        raise ConfigError(f"{name}={raw!r} must match file names only, without '/'")
    try:
        fnmatch.translate(raw)
    except Exception:  # noqa: BLE001 - any failure to compile is a bad setting
        raise ConfigError(f"{name}={raw!r} is not a valid glob") from None
    return raw


def _date_pattern(name: str, raw: str) -> str:
    try:
        compiled = re.compile(raw)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid regular expression: {exc}") from None
    if "date" not in compiled.groupindex:
        raise ConfigError(f"{name}={raw!r} has no named group 'date', e.g. (?P<date>\\d{{8}})")
    return raw


def _host(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() or ord(c) < 32 for c in value) or "/" in value:
        raise ConfigError(f"{name}={raw!r} is not a valid host name")
    return value


def _user(name: str, raw: str) -> str:
    if any(ord(c) < 32 for c in raw):
        raise ConfigError(f"{name} contains control characters")
    return raw


# The only placeholders a companion file's name may use.
TEMPLATE_FIELDS = ("name", "stem")


def _name_template(name: str, raw: str) -> str:
    """A file name, possibly with {name} and {stem} in it; never the data file's own name."""
    value = raw.strip()
    if not value or "/" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{name}: {raw!r} must be a file name, without '/' or control characters")
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} has unbalanced braces (write {{{{ and }}}} for literal ones)") from None
    for _, field_name, spec, conversion in parts:
        if field_name is not None and (field_name not in TEMPLATE_FIELDS or spec or conversion):
            raise ConfigError(f"{name}: {raw!r} may only use the placeholders {{name}} and {{stem}}")
    if value in ("{name}", "{stem}"):
        raise ConfigError(f"{name}: {raw!r} would name the data file itself")
    return value


def _checksum_files(name: str, raw: str) -> tuple[str, ...]:
    value = raw.strip()
    if value.lower() == "auto":
        return CHECKSUM_AUTO
    if value.lower() == "off":
        return ()
    templates = tuple(_name_template(name, part) for part in value.split(",") if part.strip())
    if not templates:
        raise ConfigError(f"{name}={raw!r} is not auto, off, or a list of names")
    return templates


def _ready_marker(name: str, raw: str) -> str:
    if raw.strip().lower() == READY_MARKER_CHECKSUM:
        return READY_MARKER_CHECKSUM
    return _name_template(name, raw)


def _command(name: str, raw: str) -> str:
    value = raw.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{name} contains control characters")
    return value


# An OpenPGP v4 fingerprint: SHA-1, 40 hex digits; gpg prints it in groups of four.
_PGP_FINGERPRINT = re.compile(r"[0-9A-F]{40}")


def _pgp_fingerprints(name: str, raw: str) -> tuple[str, ...]:
    values = []
    for part in raw.split(","):
        value = "".join(part.split()).upper()
        if not value:
            continue
        if not _PGP_FINGERPRINT.fullmatch(value):
            raise ConfigError(f"{name}: {part.strip()!r} is not an OpenPGP fingerprint (40 hex digits)")
        values.append(value)
    return tuple(values)


def _suffixes(name: str, raw: str) -> tuple[str, ...]:
    values = tuple(v.strip().lower() for v in raw.split(",") if v.strip())
    for value in values:
        if not value.startswith(".") or len(value) < 2 or "/" in value or any(c.isspace() for c in value):
            raise ConfigError(f"{name}: {value!r} is not a name ending such as .gpg")
    return values


# rclone's convention: binary multiples, so 10M is 10 MiB/s.
_RATE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)?")
# Below this a limit would make every read request wait for seconds.
MIN_BANDWIDTH = 1024


def _byte_rate(name: str, raw: str) -> int:
    match = _RATE.fullmatch(raw.strip().upper())
    if not match:
        raise ConfigError(f"{name}={raw!r} is not a rate such as 500K, 10M, 1G or a number of bytes per second")
    value = int(float(match.group(1)) * _RATE_UNITS[match.group(2)])
    if value < MIN_BANDWIDTH:
        raise ConfigError(f"{name}={raw!r} must be at least {MIN_BANDWIDTH} bytes per second (unset it for no limit)")
    return value


def _byte_size(name: str, raw: str) -> int:
    match = _RATE.fullmatch(raw.strip().upper())
    if not match:
        raise ConfigError(f"{name}={raw!r} is not a size such as 512M, 10G or a number of bytes (0: no limit)")
    return int(float(match.group(1)) * _RATE_UNITS[match.group(2)])


def _jump_host(name: str, raw: str) -> str:
    parse_jump(name, raw)
    return raw.strip()


def _proxy(name: str, raw: str) -> str:
    parse_proxy(name, raw)
    return raw.strip()


def _remote_dir(name: str, raw: str) -> str:
    value = raw.strip()
    if any(ord(c) < 32 for c in value):
        raise ConfigError(f"{name} contains control characters")
    return value


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "sftp_host": _host,
    "sftp_user": _user,
    "sftp_port": _int(1, 65535),
    "sftp_pass": _text,
    "sftp_pass_file": _path,
    "sftp_key_file": _path,
    "sftp_key_passphrase": _text,
    "sftp_key_passphrase_file": _path,
    "sftp_known_hosts": _path,
    "sftp_host_key_policy": _choice(HOST_KEY_POLICIES),
    "sftp_host_key_fingerprint": _fingerprints,
    "sftp_use_agent": _bool,
    "sftp_cert_file": _path,
    "sftp_jump_host": _jump_host,
    "sftp_jump_user": _user,
    "sftp_jump_key_file": _path,
    "sftp_jump_pass_file": _path,
    "sftp_proxy": _proxy,
    "sftp_proxy_pass_file": _path,
    "ssh_algorithms": _choice(SSH_ALGORITHMS),
    "sftp_dir": _text,
    "local_dir": _path,
    "server_dir": _path,
    "log_file": _path,
    "last_file_record": _path,
    "ledger_file": _path,
    "publish_method": _choice(PUBLISH_METHODS),
    "file_pattern": _pattern,
    "max_listing": _int(1, 10_000_000),
    "file_mode": _octal_mode,
    "order_by": _choice(ORDERINGS),
    "select_mode": _choice(SELECT_MODES),
    "min_file_age": _int(0),
    "date_pattern": _date_pattern,
    "late_files": _choice(LATE_POLICIES),
    # 4 KiB floor: smaller requests cost a round trip each for almost no data.
    "chunk_size": _int(4096, 64 * MiB),
    "pipeline_depth": _int(1, 1024),
    "concurrent_files": _int(1, 256),
    # paramiko clamps windows below 32 KiB; the window is also memory the server
    # may fill, so it is capped well below what would break the memory bound.
    "ssh_window_size": _int(32 * 1024, 256 * MiB),
    # Below 64 KiB the connection would spend its time renegotiating keys.
    "ssh_rekey_bytes": _int(64 * 1024),
    "connect_timeout": _int(1, 3600),
    "io_timeout": _int(1, 86400),
    "keepalive_interval": _int(0, 86400),
    "resume_verify_bytes": _int(0, 64 * MiB),
    "local_retention": _retention,
    "stuck_after_runs": _int(0, 1000),
    "retry_max_tries": _int(1, 1000),
    "retry_max_time": _int(0),
    "retry_backoff_factor": _float(0.0),
    "report_file": _path,
    "metrics_pushgateway_url": _url,
    "metrics_instance": _text,
    "metrics_textfile": _path,
    "metrics_schedule_seconds": _int(1),
    "strict_settings": _bool,
    "notify_webhook_url": _url,
    "notify_on": _choice(NOTIFY_ON),
    "notify_timeout": _int(1, 300),
    "notify_smtp_host": _host,
    "notify_smtp_port": _int(1, 65535),
    "notify_smtp_security": _choice(SMTP_SECURITY),
    "notify_smtp_user": _text,
    "notify_smtp_pass_file": _path,
    "notify_smtp_from": _address,
    "notify_smtp_to": _addresses,
    "log_level": _choice(LOG_LEVELS, upper=True),
    "log_format": _choice(LOG_FORMATS),
    "checksum_files": _checksum_files,
    "remote_hash_command": _command,
    "verify_source": _choice(VERIFY_SOURCE_POLICIES),
    "ready_marker": _ready_marker,
    "decrypt": _choice(DECRYPT_METHODS),
    "gpg_private_key_file": _path,
    "gpg_passphrase_file": _path,
    "gpg_require_signer": _pgp_fingerprints,
    "decrypt_suffixes": _suffixes,
    "decrypt_max_ratio": _int(0, 1_000_000),
    "decrypt_max_size": _byte_size,
    "bandwidth_limit": _byte_rate,
    "remote_after": _choice(REMOTE_AFTER_ACTIONS),
    "remote_archive_dir": _remote_dir,
    "remote_after_required": _bool,
}


class Environment(dict[str, str]):
    """The merged settings mapping, plus warnings about names that look like misspelt settings.

    A dict, so it feeds ``load_settings`` as it is; the warnings are values, not log
    lines, because they are found before logging is configured.
    """

    def __init__(self, values: Mapping[str, str], warnings: Iterable[str] = ()) -> None:
        super().__init__(values)
        self.warnings: tuple[str, ...] = tuple(warnings)


def read_environment(env_file: Path | None, environ: Mapping[str, str]) -> Environment:
    """Merge a dotenv file under the real environment (the environment wins).

    Without ``env_file``, ``./.env`` is read if it exists. A named file must exist.
    Values are taken literally: ``${VAR}`` is not expanded (python-dotenv would).
    A line of the file that is not ``NAME=value`` is a ConfigError naming the file
    and the line: skipping it would run with a default the operator meant to change.
    """
    path = env_file if env_file is not None else Path(".env")
    merged: dict[str, str] = {}
    warnings: list[str] = []
    if env_file is not None and not path.is_file():
        raise ConfigError(f"--env-file {path}: no such file")
    if path.is_file():
        try:
            names = _dotenv_names(path)
            # No ${VAR} expansion, for any value: a password or a path containing
            # "${" (pa${HOME}ss) is taken as written, as the environment would give it.
            values = dotenv_values(path, interpolate=False)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read env file {path}: {exc.__class__.__name__}") from None
        merged.update({k: v for k, v in values.items() if v is not None})
        warnings += (f"{path}:{line}: {hint}" for name, line in names if (hint := _unknown_name_hint(name, False)))
    merged.update(environ)
    if path.is_file() and environ.get("INVOCATION_ID"):
        # Under systemd, a name in both places is the unit's Environment= overriding the
        # file: an edit to the file would otherwise be ignored without a word.
        warnings += (
            f"{path}:{line}: {name} is also set by the unit's Environment= (or the environment),"
            " which wins; the file's value is ignored"
            for name, line in names
            if name in environ and name in _SETTING_NAMES
        )
    warnings += (f"environment: {hint}" for name in sorted(environ) if (hint := _unknown_name_hint(name, True)))
    return Environment(merged, warnings)


# A statement's leading name, to point at the culprit without echoing its value (it may be a secret).
_LEADING_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)")


def _dotenv_names(path: Path) -> list[tuple[str, int]]:
    """The names a dotenv file sets, with their line numbers; raises ConfigError at the first bad line."""
    names: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as stream:
        for binding in parse_stream(stream):
            if binding.error:
                text = binding.original.string
                leading = _LEADING_NAME.match(text)
                what = f"the line starting with {leading.group(1)}" if leading else "this line"
                # An unclosed quote makes the parser swallow the lines after it.
                hint = "; check its quotes" if "\n" in text.rstrip("\n") or any(q in text for q in "\"'") else ""
                raise ConfigError(f"{path}:{binding.original.line}: cannot parse {what}: expected NAME=value{hint}")
            if binding.key is not None:
                names.append((binding.key, binding.original.line))
    return names


def dotenv_lines(path: Path) -> dict[str, int]:
    """Each name a dotenv file sets, with the line of its last setting (the one that counts)."""
    return dict(_dotenv_names(path))


_SETTING_NAMES = frozenset(env_name(f.name) for f in fields(Settings) if not f.metadata.get("internal"))
# The first word of each setting's name: another name starting so is most likely meant for us.
# SSH_ is left out: OpenSSH owns it in the environment (SSH_AUTH_SOCK, SSH_CONNECTION, ...).
_OUR_PREFIXES = tuple(sorted({n.split("_", 1)[0] + "_" for n in _SETTING_NAMES} - {"SSH_"}))
# Read from the same .env by docker-compose.yml, not by the job.
_NOT_OURS = frozenset({"SFTP_TEST_PORT", "BASE_IMAGE"})
# Kubernetes injects <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_22_TCP... for every Service:
# a Service named "sftp" must not make every run warn.
_SERVICE_LINK = re.compile(r".+_(SERVICE_HOST|SERVICE_PORT(_.+)?|PORT_\d+_(TCP|UDP|SCTP)(_.+)?)")


def _unknown_name_hint(name: str, from_environment: bool) -> str | None:
    """A warning for a name that is not a setting but looks meant as one, else None.

    From the real environment only names with our prefixes count (it holds much
    else); in a dotenv file, written for this job, a name close to a setting does too.
    """
    upper = name.upper()
    if name in _SETTING_NAMES or upper in _NOT_OURS or _SERVICE_LINK.fullmatch(upper):
        return None
    ours = upper.startswith(_OUR_PREFIXES)
    # A name with our prefix is ours anyway: a looser match still makes a useful guess there.
    close = difflib.get_close_matches(upper, _SETTING_NAMES, n=1, cutoff=0.75 if ours else 0.8)
    if not ours and (from_environment or not close):
        return None
    guess = f"; did you mean {close[0]}?" if close else ""
    return f"{name} is not a setting and is ignored{guess}"


def _read_secret_file(name: str, path: Path) -> str:
    try:
        # newline="" keeps a password's own carriage returns as they are.
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{name}={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}={path}: cannot read it ({exc.__class__.__name__})") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise ConfigError(f"{name}={path} is empty")
    return text


class MissingSettingError(ConfigError):
    """A required setting is not set (the command line adds where it looked)."""


def _parse(env: Mapping[str, str], names: frozenset[str] | None = None) -> dict[str, Any]:
    """The set values among Settings' fields (all, or only ``names``), parsed.

    Empty values count as unset, as in most env_file conventions.
    """
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.metadata.get("internal") or (names is not None and f.name not in names):
            continue
        name = env_name(f.name)
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            if f.default is MISSING:
                raise MissingSettingError(f"{name} is required but not set")
            continue
        values[f.name] = _PARSERS[f.name](name, raw)
    return values


STATE_FIELDS = frozenset(f.name for f in fields(StateSettings))


def state_setting_names() -> list[str]:
    """The environment variables StateSettings reads, in declaration order."""
    return [env_name(f.name) for f in fields(StateSettings)]


def load_state_settings(env: Mapping[str, str]) -> StateSettings:
    """Only the settings describing local state, parsed and checked as load_settings
    does; connection settings and credentials are neither needed nor read."""
    defaults = {f.name: f.default for f in fields(Settings) if f.name in STATE_FIELDS}
    settings = StateSettings(**{**defaults, **_parse(env, STATE_FIELDS)})
    _check_paths(settings)
    return settings


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build and validate Settings from a mapping of environment variables.

    Raises ConfigError naming the first offending setting.
    """
    values = _parse(env)
    if values.get("sftp_pass") is not None and values.get("sftp_pass_file") is not None:
        raise ConfigError("set only one of SFTP_PASS and SFTP_PASS_FILE")
    pass_file = values.get("sftp_pass_file")
    if pass_file is not None:
        values["sftp_pass"] = _read_secret_file("SFTP_PASS_FILE", pass_file)
    key_file = values.get("sftp_key_file")
    if key_file is not None and not key_file.is_file():
        raise ConfigError(f"SFTP_KEY_FILE={key_file}: no such file")
    if values.get("sftp_pass") is None and key_file is None and not values.get("sftp_use_agent"):
        raise ConfigError("no credentials: set SFTP_PASS, SFTP_PASS_FILE, SFTP_KEY_FILE or SFTP_USE_AGENT=true")
    if values.get("sftp_key_passphrase") is not None and values.get("sftp_key_passphrase_file") is not None:
        raise ConfigError("set only one of SFTP_KEY_PASSPHRASE and SFTP_KEY_PASSPHRASE_FILE")
    passphrase_file = values.get("sftp_key_passphrase_file")
    if passphrase_file is not None:
        if key_file is None:
            raise ConfigError("SFTP_KEY_PASSPHRASE_FILE is set but SFTP_KEY_FILE is not")
        values["sftp_key_passphrase"] = _read_secret_file("SFTP_KEY_PASSPHRASE_FILE", passphrase_file)
    if values.get("sftp_key_passphrase") is not None and key_file is None:
        raise ConfigError("SFTP_KEY_PASSPHRASE is set but SFTP_KEY_FILE is not")
    _check_network(values)

    smtp_pass_file = values.get("notify_smtp_pass_file")
    if smtp_pass_file is not None:
        values["notify_smtp_pass"] = _read_secret_file("NOTIFY_SMTP_PASS_FILE", smtp_pass_file)
    if values.get("notify_smtp_host") and not (values.get("notify_smtp_from") and values.get("notify_smtp_to")):
        raise ConfigError("NOTIFY_SMTP_HOST is set: set NOTIFY_SMTP_FROM and NOTIFY_SMTP_TO too")

    _check_lifecycle(values)
    # Port 465 meant implicit TLS before NOTIFY_SMTP_SECURITY existed, and it is that mode's port.
    if "notify_smtp_security" not in values and values.get("notify_smtp_port") == SMTPS_PORT:
        values["notify_smtp_security"] = "tls"
    if values.get("notify_smtp_security") == "tls" and "notify_smtp_port" not in values:
        values["notify_smtp_port"] = SMTPS_PORT

    if values.get("ready_marker") == READY_MARKER_CHECKSUM and values.get("checksum_files") == ():
        raise ConfigError("READY_MARKER=checksum needs checksum files: CHECKSUM_FILES is off")

    # The default is written with "~" for the documentation; expand it now, for the
    # user running the job (only values read from the environment were expanded).
    values.setdefault("sftp_known_hosts", Path("~/.ssh/known_hosts").expanduser())
    settings = Settings(**values)
    _check_paths(settings)
    return settings


def _check_paths(s: Settings | StateSettings) -> None:
    named = {
        "LOCAL_DIR": s.local_dir.resolve(),
        "SERVER_DIR": s.server_dir.resolve(),
    }
    if named["LOCAL_DIR"] == named["SERVER_DIR"]:
        raise ConfigError("LOCAL_DIR and SERVER_DIR must be different directories")
    for label, directory in named.items():
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"{label}={directory} exists and is not a directory")
    for label, path in (("LAST_FILE_RECORD", s.last_file_record), ("LOG_FILE", s.log_file)):
        if path.is_dir():
            raise ConfigError(f"{label}={path} is a directory, not a file")
    if s.ledger_path.is_dir():
        raise ConfigError(f"LEDGER_FILE={s.ledger_path} is a directory, not a file")


def _check_network(values: dict[str, Any]) -> None:
    """The certificate, jump host and proxy settings that only make sense together;
    reads SFTP_JUMP_PASS_FILE and SFTP_PROXY_PASS_FILE."""
    cert_file = values.get("sftp_cert_file")
    if cert_file is not None:
        if values.get("sftp_key_file") is None:
            raise ConfigError("SFTP_CERT_FILE is set but SFTP_KEY_FILE (the certificate's key) is not")
        if not cert_file.is_file():
            raise ConfigError(f"SFTP_CERT_FILE={cert_file}: no such file")
    jump_set = [n for n in ("sftp_jump_user", "sftp_jump_key_file", "sftp_jump_pass_file") if n in values]
    if jump_set and not values.get("sftp_jump_host"):
        raise ConfigError(f"{env_name(jump_set[0])} is set but SFTP_JUMP_HOST is not")
    jump_key = values.get("sftp_jump_key_file")
    if jump_key is not None and not jump_key.is_file():
        raise ConfigError(f"SFTP_JUMP_KEY_FILE={jump_key}: no such file")
    jump_pass_file = values.get("sftp_jump_pass_file")
    if jump_pass_file is not None:
        values["sftp_jump_pass"] = _read_secret_file("SFTP_JUMP_PASS_FILE", jump_pass_file)
    proxy_pass_file = values.get("sftp_proxy_pass_file")
    if proxy_pass_file is not None:
        proxy = values.get("sftp_proxy")
        if not proxy:
            raise ConfigError("SFTP_PROXY_PASS_FILE is set but SFTP_PROXY is not")
        parsed = parse_proxy("SFTP_PROXY", proxy)
        if parsed.username is None:
            raise ConfigError("SFTP_PROXY_PASS_FILE is set but SFTP_PROXY names no user (user@host:port)")
        if parsed.password is not None:
            raise ConfigError("SFTP_PROXY holds a password and SFTP_PROXY_PASS_FILE is set: use only one")
        values["sftp_proxy_pass"] = _read_secret_file("SFTP_PROXY_PASS_FILE", proxy_pass_file)


def _check_lifecycle(values: dict[str, Any]) -> None:
    """DECRYPT and REMOTE_AFTER settings that only make sense together; reads GPG_PASSPHRASE_FILE."""
    if values.get("decrypt") == "gpg":
        key_file = values.get("gpg_private_key_file")
        if key_file is None:
            raise ConfigError("DECRYPT=gpg: set GPG_PRIVATE_KEY_FILE")
        if not key_file.is_file():
            raise ConfigError(f"GPG_PRIVATE_KEY_FILE={key_file}: no such file")
        passphrase_file = values.get("gpg_passphrase_file")
        if passphrase_file is not None:
            values["gpg_passphrase"] = _read_secret_file("GPG_PASSPHRASE_FILE", passphrase_file)
    if values.get("remote_after") == "move" and not values.get("remote_archive_dir"):
        raise ConfigError("REMOTE_AFTER=move: set REMOTE_ARCHIVE_DIR")
