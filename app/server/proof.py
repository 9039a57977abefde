"""Source proof: evidence that a downloaded file equals the file on the server.

The job's own SHA-256 proves only that SERVER_DIR holds what was received. This
module gathers evidence from the other side, strongest first:

* ``check-file-handle:<algorithm>``: the server hashes the file itself (ProFTPD
  mod_sftp, Apache MINA SSHD, several commercial servers; not OpenSSH);
* ``checksum-file:<file>``: a checksum file the partner publishes beside the data;
* ``command:<command>``: REMOTE_HASH_COMMAND run over an SSH exec channel (opt-in);
* ``size+mtime``: nothing more than the listing (the fallback under VERIFY_SOURCE=auto).

The pure parts (templates, companions, markers, checksum parsing, policy) take
plain values; the I/O parts take a ``Connection`` and translate library errors
at ``remote_errors`` like the rest of the job.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
import string
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
from loguru import logger

from app.config import READY_MARKER_CHECKSUM, Settings
from app.errors import RemoteFileError, RemoteMissingError, TransientError
from app.server import manifests
from app.server.pipeline import (
    CHECK_FILE_DIGEST_SIZES,
    DigestUnparseableError,
    check_file_handle,
    known_without_check_file,
    open_for_reading,
)

if TYPE_CHECKING:
    from app.server.remote import Connection

# Strongest first: the order the server is asked to choose in.
ALGORITHMS = ("sha512", "sha384", "sha256", "sha224", "sha1", "md5")
# The digest the transfer computes on the way anyway.
BASE_ALGORITHM = "sha256"
# What a bare hex digest is, when nothing else names its algorithm.
_BY_HEX_LENGTH = {2 * size: name for name, size in CHECK_FILE_DIGEST_SIZES.items()}
# BSD tags as coreutils (--tag), BSD md5/sha* and OpenSSL (SHA2-256) write them.
_TAGS = {
    **{name.upper(): name for name in ALGORITHMS},
    **{f"SHA2-{bits}": f"sha{bits}" for bits in (224, 256, 384, 512)},
}

SIZE_MTIME = "size+mtime"
METHOD_SERVER = "check-file-handle"
METHOD_CHECKSUM_FILE = "checksum-file"
METHOD_COMMAND = "command"
# The methods that ask the server about the data file itself, by its path: unavailable
# on a server that removes a file once it is read.
BY_PATH = (METHOD_SERVER, METHOD_COMMAND)
# Every method a file can be recorded with, strongest first.
METHODS = (METHOD_SERVER, METHOD_CHECKSUM_FILE, METHOD_COMMAND, SIZE_MTIME)

# A checksum file (or a command's output) larger than this is not believed: even a
# manifest of 100,000 files with SHA-512 digests stays well below it.
MAX_CHECKSUM_BYTES = 16 * 1024 * 1024
MAX_COMMAND_OUTPUT = 64 * 1024
# Per-block proof of a kept prefix: blocks of at least this size, and at most this
# many of them, so the server's reply stays small (4096 SHA-512 digests: 256 KiB).
PREFIX_BLOCK = 1024 * 1024
MAX_PREFIX_BLOCKS = 4096
# ProFTPD refuses smaller blocks.
MIN_BLOCK = 256
_READ = 1024 * 1024
# A server digest or REMOTE_HASH_COMMAND is allowed IO_TIMEOUT plus the file's size at
# this rate: nothing is said until the whole file has been read, from a possibly slow disk.
SERVER_HASH_RATE = 20 * 1024 * 1024


def hash_timeout(io_timeout: float, size: int) -> float:
    """Seconds to wait for the server to hash ``size`` bytes."""
    return io_timeout + size / SERVER_HASH_RATE


class ChecksumFileError(RemoteFileError):
    """A checksum file (or a hash command's output) cannot be understood; names the file and line."""


class ProofMismatchError(RemoteFileError):
    """The server's evidence contradicts the downloaded bytes: the download must not be recorded."""


class NoProofError(RemoteFileError):
    """VERIFY_SOURCE=required and no proof of this file is available."""


@dataclass(frozen=True)
class Expected:
    """A digest the server side vouches for, and how it was obtained."""

    algorithm: str
    hexdigest: str
    method: str  # METHOD_SERVER, METHOD_CHECKSUM_FILE or METHOD_COMMAND
    source: str  # the algorithm, the checksum file's name, or the command's name

    @property
    def verified_by(self) -> str:
        return f"{self.method}:{self.source}"


# -- Templates, companions and markers (pure) -------------------------------------------


def stem(name: str) -> str:
    """NAME without its last suffix (``a.tar.gz`` -> ``a.tar``), as ``{stem}`` means."""
    return posixpath.splitext(name)[0]


def render(template: str, name: str) -> str:
    """The companion name ``template`` gives for data file ``name``."""
    return template.format(name=name, stem=stem(name))


@lru_cache(maxsize=64)
def _shape(template: str) -> re.Pattern[str]:
    """Every name ``template`` can render to, whatever the data file's name."""
    parts = []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field_name is not None:
            parts.append(".+")
    return re.compile("".join(parts), re.DOTALL)


def _companion_templates(settings: Settings) -> tuple[str, ...]:
    marker = settings.ready_marker
    extra = (marker,) if marker is not None and marker != READY_MARKER_CHECKSUM else ()
    return (*settings.checksum_files, *extra)


def is_companion(name: str, settings: Settings) -> bool:
    """Whether ``name`` is a checksum file or a ready marker, never a data file.

    Decided by the name's shape alone, not by whether its data file is listed: a
    checksum file uploaded before (or without) its data file is still no data.
    """
    shape = _companion_shape(_companion_templates(settings))
    return shape is not None and shape.fullmatch(name) is not None


@lru_cache(maxsize=16)
def _companion_shape(templates: tuple[str, ...]) -> re.Pattern[str] | None:
    """Every template's shape in one pattern: one match per listed name, not one per
    template (a listing of 50,000 names against the default 14 templates)."""
    if not templates:
        return None
    return re.compile("|".join(f"(?:{_shape(t).pattern})" for t in templates), re.DOTALL)


@dataclass(frozen=True)
class ChecksumSource:
    """A listed file that may hold the expected digest of a data file."""

    file: str
    per_file: bool  # named after the data file ({name}/{stem}), not a manifest


def find_checksum_sources(listing_names: Collection[str], name: str, templates: Sequence[str]) -> list[ChecksumSource]:
    """The checksum files for ``name`` present in the listing, in the templates' order."""
    listed = listing_names if isinstance(listing_names, set | frozenset) else set(listing_names)
    found: list[ChecksumSource] = []
    for template in templates:
        candidate = render(template, name)
        if candidate != name and candidate in listed and all(s.file != candidate for s in found):
            found.append(ChecksumSource(candidate, per_file=candidate != template))
    return found


def awaited_marker(name: str, listing_names: Collection[str], settings: Settings) -> str | None:
    """The marker ``name`` still waits for (for messages), or None when it is due or READY_MARKER is unset."""
    marker = settings.ready_marker
    if marker is None:
        return None
    if marker == READY_MARKER_CHECKSUM:
        if find_checksum_sources(listing_names, name, settings.checksum_files):
            return None
        return "its checksum file"
    expected = render(marker, name)
    return None if expected in listing_names else expected


def is_ready(name: str, listing_names: Collection[str], settings: Settings) -> bool:
    """Whether ``name`` may be taken as far as READY_MARKER is concerned."""
    return awaited_marker(name, listing_names, settings) is None


# -- Checksum files (pure) --------------------------------------------------------------

_HEX = "[0-9A-Fa-f]+"
_BSD_LINE = re.compile(rf"\\?(?P<tag>[A-Za-z0-9-]+) ?\((?P<name>.*)\) ?= ?(?P<hex>{_HEX})")
_GNU_LINE = re.compile(rf"(?P<escaped>\\)?(?P<hex>{_HEX})(?: [ *]| (?=[^ *]))(?P<name>.+)", re.DOTALL)
_BARE_LINE = re.compile(_HEX)
_ALGORITHM_HINT = re.compile(r"(?:.*\.)?(?P<alg>md5|sha1|sha224|sha256|sha384|sha512)(?:sums?)?", re.IGNORECASE)


def algorithm_hint(source: str) -> str | None:
    """The algorithm a file or program name implies: X.sha256, SHA256SUMS, sha256sum; else None."""
    match = _ALGORITHM_HINT.fullmatch(posixpath.basename(source))
    return match.group("alg").lower() if match else None


def _unescape(name: str) -> str:
    """coreutils' escaping of names with a backslash or newline (the line then starts with '\\')."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "\\": "\\"}.get(m.group(1), m.group(0)), name)


@dataclass(frozen=True)
class ChecksumFile:
    """A parsed checksum file: digests by file name, or one bare digest."""

    source: str
    entries: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (algorithm, hex)
    bare: tuple[str, str] | None = None

    def expected(self, name: str, *, per_file: bool, method: str = METHOD_CHECKSUM_FILE) -> Expected | None:
        """The digest this file gives for ``name``, None if it does not mention it.

        A per-file checksum file may hold a bare digest, or one line naming the file
        (possibly with a directory); naming another file is an error, not "absent".
        """
        found = self.entries.get(name) or self.entries.get(f"./{name}")
        if found is None and per_file:
            if self.bare is not None:
                found = self.bare
            elif len(self.entries) == 1:
                (listed, digest), *_ = self.entries.items()
                if posixpath.basename(listed) != name:
                    raise ChecksumFileError(f"{self.source} is for {listed!r}, not for {name!r}")
                found = digest
        if found is None:
            return None
        algorithm, hexdigest = found
        return Expected(algorithm=algorithm, hexdigest=hexdigest, method=method, source=self.source)


def _algorithm(source: str, where: str, hexdigest: str, tag: str | None) -> str:
    by_length = _BY_HEX_LENGTH.get(len(hexdigest))
    if tag is not None:
        named = _TAGS.get(tag.upper())
        if named is None:
            raise ChecksumFileError(f"{where}: unknown algorithm {tag[:20]!r}")
    else:
        named = algorithm_hint(source) or by_length
    if named is None or by_length != named:
        raise ChecksumFileError(f"{where}: a digest of {len(hexdigest)} hex digits is not {named or 'a known digest'}")
    return named


def parse_checksum_file(data: bytes, source: str) -> ChecksumFile:
    """Parse GNU coreutils (``<hex>  NAME``, ``<hex> *NAME``), BSD tags (``SHA256 (NAME) = <hex>``)
    or a bare digest alone; blank and ``#`` lines are skipped. Raises ChecksumFileError only."""
    if len(data) > MAX_CHECKSUM_BYTES:
        raise ChecksumFileError(f"{source} is larger than {MAX_CHECKSUM_BYTES} bytes")
    # surrogateescape: names compare equal to the listing's, which is decoded the same way.
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    entries: dict[str, tuple[str, str]] = {}
    bare: list[tuple[str, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source} line {number}"
        if match := _BSD_LINE.fullmatch(line):
            name, hexdigest, tag = match["name"], match["hex"], match["tag"]
            if line.startswith("\\"):
                name = _unescape(name)
        elif match := _GNU_LINE.fullmatch(line):
            name, hexdigest, tag = match["name"], match["hex"], None
            if match["escaped"]:
                name = _unescape(name)
        elif _BARE_LINE.fullmatch(line.strip()):
            hexdigest = line.strip()
            bare.append((_algorithm(source, where, hexdigest, None), hexdigest.lower()))
            continue
        else:
            raise ChecksumFileError(f"{where} is not a checksum line")
        digest = (_algorithm(source, where, hexdigest, tag), hexdigest.lower())
        if entries.setdefault(name, digest) != digest:
            raise ChecksumFileError(f"{where}: a second, different digest for {name!r}")
    if bare and (entries or len(bare) > 1):
        raise ChecksumFileError(f"{source}: a bare digest must be alone in its file")
    if not entries and not bare:
        raise ChecksumFileError(f"{source} holds no checksums")
    return ChecksumFile(source=source, entries=entries, bare=bare[0] if bare else None)


# -- Policy (pure) ----------------------------------------------------------------------


def plan(policy: str, checksum_sources: Sequence[ChecksumSource], command: str | None) -> tuple[str, ...]:
    """The methods to try for one file, strongest first (none under VERIFY_SOURCE=off)."""
    if policy == "off":
        return ()
    methods = [METHOD_SERVER]
    if checksum_sources:
        methods.append(METHOD_CHECKSUM_FILE)
    if command:
        methods.append(METHOD_COMMAND)
    return tuple(methods)


def settle(policy: str, name: str, tried: Sequence[str]) -> str:
    """What is recorded when no method had evidence: size+mtime, or NoProofError when required."""
    if policy == "required":
        what = ", ".join(tried) or "nothing"
        raise NoProofError(f"{name!r}: VERIFY_SOURCE=required but no proof is available (tried {what})")
    return SIZE_MTIME


def verdict(name: str, expected: Expected, local: Mapping[str, str]) -> str:
    """``verified_by`` when the local digest of the same algorithm equals the expected one, else ProofMismatchError."""
    actual = local.get(expected.algorithm)
    if actual is None:
        raise ValueError(f"no local {expected.algorithm} digest to compare with")
    if actual.lower() != expected.hexdigest.lower():
        raise ProofMismatchError(
            f"{name!r} differs from the server's: {expected.verified_by} says {expected.algorithm}"
            f" {expected.hexdigest[:16]}..., the download has {actual[:16]}..."
        )
    return expected.verified_by


# -- Local digests ----------------------------------------------------------------------

# The algorithm each session's server chose last, so the next download computes it on the way.
_SERVER_CHOICE: weakref.WeakKeyDictionary[paramiko.SFTPClient, str] = weakref.WeakKeyDictionary()


def hashers_alongside(conn: Connection) -> dict[str, hashlib._Hash]:
    """Extra hash objects for the transfer to feed besides its SHA-256: the algorithm this
    server answered with before (SHA-512, or MD5/SHA-1 on servers with nothing stronger)."""
    chosen = _SERVER_CHOICE.get(conn.sftp)
    return {} if chosen in (None, BASE_ALGORITHM) else {chosen: hashlib.new(chosen)}


def file_digests(path: Path, algorithms: Iterable[str], length: int | None = None) -> dict[str, str]:
    """Hex digests of ``path`` (its first ``length`` bytes) for algorithms not computed on the way."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    remaining = length
    with open(path, "rb") as fh:
        while remaining is None or remaining > 0:
            chunk = fh.read(_READ if remaining is None else min(_READ, remaining))
            if not chunk:
                break
            for h in hashers.values():
                h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _block_digests(path: Path, algorithm: str, block_size: int, blocks: int) -> list[bytes]:
    out = []
    with open(path, "rb") as fh:
        for _ in range(blocks):
            out.append(hashlib.new(algorithm, fh.read(block_size)).digest())
    return out


# -- Server digests (I/O) ---------------------------------------------------------------


def server_digest(conn: Connection, remote_path: str, size: int, timeout: float | None = None) -> Expected | None:
    """The server's digest of the whole file, by the strongest algorithm it offers; None when not offered.

    An empty file is never asked about: ProFTPD refuses it as if the extension were missing.
    """
    from app.server.remote import remote_errors  # app.server.remote imports selection, which will import this module

    if size == 0:
        return None
    try:
        with (
            remote_errors(f"check-file-handle {remote_path!r}", conn=conn),
            open_for_reading(conn.sftp, remote_path) as h,
        ):
            answer = check_file_handle(conn.sftp, h, list(ALGORITHMS), timeout=timeout, path=remote_path, blocks=1)
    except DigestUnparseableError as exc:
        _digest_unavailable(conn, remote_path, exc)
        return None
    if answer.algorithm is None:
        return None
    _SERVER_CHOICE[conn.sftp] = answer.algorithm
    return Expected(answer.algorithm, answer.hashes[0].hex(), METHOD_SERVER, answer.algorithm)


# Servers whose digest replies could not be read, said once per run.
_UNPARSEABLE_SAID: set[tuple[str, int]] = set()


def _digest_unavailable(conn: Connection, remote_path: str, exc: DigestUnparseableError) -> None:
    """A digest reply that cannot be read is no evidence either way: the next proof decides."""
    conn.digest_unparseable = str(exc)
    server = conn.server
    if server not in _UNPARSEABLE_SAID:
        _UNPARSEABLE_SAID.add(server)
        logger.warning(
            "server digest unavailable for {!r}: {}; proving by the next method (said once per run)", remote_path, exc
        )


@dataclass(frozen=True)
class PrefixProof:
    """Per-block comparison of a kept partial download with the server's file, from offset 0."""

    algorithm: str
    block_size: int
    matches: list[bool]

    @property
    def proven_bytes(self) -> int:
        """Bytes from 0 proven equal: the blocks before the first mismatch. Resume from here."""
        good = next((i for i, ok in enumerate(self.matches) if not ok), len(self.matches))
        return good * self.block_size


def prefix_layout(prefix: int) -> tuple[int, int]:
    """(block size, block count) asked for to prove ``prefix`` bytes from offset 0.

    ProFTPD 1.3.8 hashes a range wrongly unless it starts at 0 and its blocks are a
    multiple of its own read buffer (4 x st_blksize, 16 KiB on most file systems; a
    70,000-byte block came back as the whole file's digest): so only whole blocks
    from 0 are asked for, each a power of two. Up to one block at the end (half
    the prefix, for one shorter than PREFIX_BLOCK) stays unproven and is fetched again.
    """
    if prefix < MIN_BLOCK:
        return 0, 0
    if prefix < PREFIX_BLOCK:
        return 1 << (prefix.bit_length() - 1), 1
    per_block = -(-prefix // MAX_PREFIX_BLOCKS)
    block = max(PREFIX_BLOCK, 1 << (per_block - 1).bit_length())
    return block, prefix // block


def prove_prefix(
    conn: Connection, remote_path: str, partial: Path, prefix: int, timeout: float | None = None
) -> PrefixProof | None:
    """Compare the first ``prefix`` bytes of ``partial`` with the server's file, block by block.

    None when the server offers no digests (the caller falls back to its sampled
    comparison). ``proven_bytes`` of the result is where a proven resume starts.
    """
    from app.server.remote import remote_errors

    block, count = prefix_layout(prefix)
    if count == 0:
        return None
    try:
        with (
            remote_errors(f"check-file-handle {remote_path!r}", conn=conn),
            open_for_reading(conn.sftp, remote_path) as h,
        ):
            answer = check_file_handle(
                conn.sftp, h, list(ALGORITHMS), 0, block * count, block, timeout, path=remote_path, blocks=count
            )
    except DigestUnparseableError as exc:
        _digest_unavailable(conn, remote_path, exc)
        return None
    if answer.algorithm is None:
        return None
    _SERVER_CHOICE[conn.sftp] = answer.algorithm
    local = _block_digests(partial, answer.algorithm, block, count)
    return PrefixProof(answer.algorithm, block, [a == b for a, b in zip(answer.hashes, local, strict=True)])


# -- Checksum files and hash commands (I/O) ---------------------------------------------


def read_checksum_file(conn: Connection, remote_dir: str, source: str) -> ChecksumFile:
    """Fetch and parse one listed checksum file."""
    from app.server.remote import remote_errors

    path = posixpath.join(remote_dir, source) if remote_dir else source
    with remote_errors(f"read checksum file {source!r}", conn=conn), conn.sftp.open(path, "rb") as fh:
        data = fh.read(MAX_CHECKSUM_BYTES + 1)
    return parse_checksum_file(data, source)


def read_manifest_file(conn: Connection, remote_dir: str, source: str) -> ChecksumFile:
    """Like read_checksum_file, for a manifest covering many files: read once per run
    while unchanged (app/server/manifests.py)."""
    from app.server.remote import remote_errors

    path = posixpath.join(remote_dir, source) if remote_dir else source
    with remote_errors(f"read checksum file {source!r}", conn=conn):
        return manifests.read_manifest(conn, path, MAX_CHECKSUM_BYTES, lambda data: parse_checksum_file(data, source))


def checksum_file_digest(
    conn: Connection, remote_dir: str, name: str, sources: Sequence[ChecksumSource]
) -> Expected | None:
    """The first digest for ``name`` found in ``sources`` (from find_checksum_sources), None if none has one."""
    for source in sources:
        if source.per_file:
            checksums = read_checksum_file(conn, remote_dir, source.file)
        else:
            checksums = read_manifest_file(conn, remote_dir, source.file)
        expected = checksums.expected(name, per_file=source.per_file)
        if expected is not None:
            return expected
    return None


def command_name(command: str) -> str:
    """How the command is named in ``verified_by``: its program's base name."""
    words = shlex.split(command) if command.strip() else []
    return posixpath.basename(words[0]) if words else command


def _drain(read: Callable[[int], bytes], limit: int, deadline: float, what: str) -> bytes:
    out = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = read(32768)
        if not chunk:
            return bytes(out)
        out += chunk
        if len(out) > limit:
            raise RemoteFileError(f"REMOTE_HASH_COMMAND wrote more than {limit} bytes to {what}")


class ExecRefusedError(RemoteFileError):
    """The server will not run REMOTE_HASH_COMMAND on this session: no exec channel.

    Azure Blob SFTP and AWS Transfer Family refuse exec and shell; under
    VERIFY_SOURCE=auto the proof is then unavailable, not failed."""


# Servers that refused REMOTE_HASH_COMMAND this run, with their refusal: not asked again
# (SFTP-only accounts may log each exec attempt as hostile), said once.
_EXEC_REFUSED: dict[tuple[str, int], str] = {}
# Servers that refused a connection's first exec channel this run: reconnecting is tried
# once (another connection may have channels left); refused again, exec is unavailable.
_FIRST_CHANNEL_REFUSED: set[tuple[str, int]] = set()


def command_digest(conn: Connection, command: str, remote_path: str, timeout: float) -> Expected:
    """Run ``<command> -- <path>`` on the server over an exec channel of the same connection and parse its output.

    The path is quoted for a POSIX shell, so any name, however hostile, reaches the
    command as one argument; ``--`` keeps a leading dash from reading as an option.

    A server that refuses the exec request gives ExecRefusedError. A refused channel
    open is a limit of channels (AWS Transfer allows 10 per connection): TransientError,
    so the job reconnects and the new connection has channels again; only a first
    channel refused on a second connection too is ExecRefusedError.
    """
    from app.server.remote import channel_refusal, remote_errors

    line = f"{command} -- {shlex.quote(remote_path)}".encode("utf-8", "surrogateescape")
    deadline = time.monotonic() + timeout
    channel: paramiko.Channel | None = None
    with remote_errors("REMOTE_HASH_COMMAND", conn=conn):
        try:
            try:
                channel = conn.transport.open_session(timeout=timeout)
            except paramiko.ChannelException as exc:
                refusal = f"the server refused to open a channel: {channel_refusal(exc)}"
                if conn.exec_channels_opened or conn.server not in _FIRST_CHANNEL_REFUSED:
                    if not conn.exec_channels_opened:
                        _FIRST_CHANNEL_REFUSED.add(conn.server)
                    raise TransientError(
                        f"REMOTE_HASH_COMMAND: {refusal} after {conn.exec_channels_opened} exec channel(s) on this"
                        " connection; reconnecting (servers limit channels per connection: AWS Transfer allows 10)"
                    ) from None
                raise ExecRefusedError(f"{refusal}, on a new connection too") from None
            conn.exec_channels_opened += 1
            channel.settimeout(timeout)
            # The command is the operator's own setting; the path is shlex-quoted above.
            channel.exec_command(line)  # nosec B601
            channel.shutdown_write()
            out = _drain(channel.recv, MAX_COMMAND_OUTPUT, deadline, "its output")
            err = _drain(channel.recv_stderr, MAX_COMMAND_OUTPUT, deadline, "stderr")
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            status = channel.recv_exit_status()
        except TimeoutError:
            raise RemoteFileError(f"REMOTE_HASH_COMMAND gave no answer within {timeout:g} s") from None
        except paramiko.SSHException:
            if not conn.transport.is_active():
                raise
            # The connection is fine and the channel opened: the server refuses the exec request itself.
            raise ExecRefusedError("the server refused the exec request (it offers SFTP only)") from None
        finally:
            if channel is not None:
                channel.close()
    conn.exec_available = True
    name = command_name(command)
    if status != 0:
        first = err.decode("utf-8", "replace").strip().splitlines()[:1]
        detail = f": {first[0][:200]!r}" if first else ""
        raise RemoteFileError(f"REMOTE_HASH_COMMAND exited with status {status}{detail}")
    parsed = parse_checksum_file(out, name)
    expected = parsed.entries.get(remote_path)
    if expected is None or len(parsed.entries) != 1:
        raise ChecksumFileError(f"REMOTE_HASH_COMMAND's output does not name {remote_path!r} alone")
    return Expected(expected[0], expected[1], METHOD_COMMAND, name)


def command_digest_if_allowed(
    conn: Connection, settings: Settings, name: str, remote_path: str, timeout: float
) -> tuple[Expected | None, str]:
    """command_digest, or (None, the refusal) when this server refuses exec channels.

    The first refusal is remembered for the run and logged once; under
    VERIFY_SOURCE=auto the file is then proven by what is left.
    """
    refused = _EXEC_REFUSED.get(conn.server)
    if refused is None:
        command = settings.remote_hash_command or ""  # plan() offers this method only when it is set
        try:
            return command_digest(conn, command, remote_path, timeout), ""
        except ExecRefusedError as exc:
            refused = str(exc)
            _EXEC_REFUSED[conn.server] = refused
            fallback = (
                "files without another proof fail (VERIFY_SOURCE=required)"
                if settings.verify_source == "required"
                else "files are proven without it"
            )
            logger.bind(file=name).warning(
                "REMOTE_HASH_COMMAND is unavailable on this server: {}; {} (said once per run)", refused, fallback
            )
    conn.exec_available, conn.exec_refusal = False, refused
    return None, f"REMOTE_HASH_COMMAND refused: {refused}"


# -- The whole proof of one downloaded file ---------------------------------------------


def prove_source(
    conn: Connection,
    settings: Settings,
    name: str,
    remote_path: str,
    listing_names: Collection[str],
    local_digests: Mapping[str, str],
    local_path: Path,
) -> str:
    """Prove a downloaded file against the server by VERIFY_SOURCE; returns ``verified_by``.

    ``local_digests`` are those computed on the way (at least sha256, plus what
    ``hashers_alongside`` asked for); any other algorithm the evidence uses is
    computed from ``local_path``. Raises ProofMismatchError when the evidence
    contradicts the download, NoProofError under ``required`` without evidence,
    ChecksumFileError for an unreadable checksum file.
    """
    sources = find_checksum_sources(listing_names, name, settings.checksum_files)
    tried: list[str] = []
    size = local_path.stat().st_size
    for method in plan(settings.verify_source, sources, settings.remote_hash_command):
        if method in BY_PATH and conn.removes_after_read:
            # The file is gone once read: asking about it by path again only gets "no such file".
            continue
        tried.append(method)
        expected: Expected | None
        if method == METHOD_SERVER:
            try:
                expected = server_digest(conn, remote_path, size, hash_timeout(settings.io_timeout, size))
            except RemoteMissingError:
                # Read in full, then gone: a server that removes what it served (see
                # transfer.removed_after_read); the other evidence still counts.
                conn.removes_after_read = True
                logger.bind(file=name).info(
                    "{}: the server removed it after reading; no server digest of it can be asked for", name
                )
                continue
            if expected is None and conn.digest_unparseable:
                tried[-1] = f"{method} (unavailable: {conn.digest_unparseable})"
        elif method == METHOD_CHECKSUM_FILE:
            expected = checksum_file_digest(conn, posixpath.dirname(remote_path), name, sources)
        else:
            timeout = hash_timeout(settings.io_timeout, size)
            expected, refusal = command_digest_if_allowed(conn, settings, name, remote_path, timeout)
            if refusal:
                tried[-1] = f"{method} ({refusal})"
        if expected is not None:
            local = dict(local_digests)
            if expected.algorithm not in local:
                local.update(file_digests(local_path, [expected.algorithm]))
            return verdict(name, expected, local)
    return settle(settings.verify_source, name, tried)


def needs_own_requests(conn: Connection, settings: Settings, name: str, listing_names: Collection[str]) -> bool:
    """Whether proving ``name`` takes requests of its own (a server digest this session
    has not yet shown it lacks, a checksum file, REMOTE_HASH_COMMAND) or may fail
    without them (VERIFY_SOURCE=required). app/catchup.py fetches such a file on its
    own, through transfer.download; any other file is proven by size and mtime alone,
    as prove_source would conclude, and may be fetched together with others."""
    if settings.verify_source == "off":
        return False
    if settings.verify_source == "required":
        return True
    if settings.remote_hash_command and conn.server not in _EXEC_REFUSED:
        return True
    if find_checksum_sources(listing_names, name, settings.checksum_files):
        return True
    return not (known_without_check_file(conn.sftp) or conn.removes_after_read)


# Servers already said to offer no proof: VERIFY_SOURCE=auto says so once per run, not per file.
_FALLBACK_SAID: set[tuple[str, int]] = set()


def prove_download(
    conn: Connection,
    settings: Settings,
    name: str,
    listing_names: Collection[str],
    local_digests: Mapping[str, str],
    local_path: Path,
) -> str:
    """The transfer's hook after a download, before the file is kept: prove_source for
    ``name`` in SFTP_DIR; returns ``verified_by``, raises as prove_source does."""
    from app.server.remote import remote_path

    verified_by = prove_source(
        conn, settings, name, remote_path(settings, name), listing_names, local_digests, local_path
    )
    server = (settings.sftp_host, settings.sftp_port)
    if verified_by == SIZE_MTIME and settings.verify_source == "auto" and server not in _FALLBACK_SAID:
        _FALLBACK_SAID.add(server)
        refused = _EXEC_REFUSED.get(server)
        command = f"REMOTE_HASH_COMMAND (refused: {refused})" if refused else "REMOTE_HASH_COMMAND"
        # INFO: most servers (OpenSSH among them) offer none, and VERIFY_SOURCE=auto
        # accepts that; VERIFY_SOURCE=required makes it an error instead.
        logger.bind(file=name).info(
            "{}: no proof from the server side (no server digest, checksum file or {});"
            " files are checked by size and mtime only (VERIFY_SOURCE=auto; said once per run)",
            name,
            command,
        )
    return verified_by


def proven_resume(conn: Connection, settings: Settings, name: str, partial: Path, have: int) -> int | None:
    """How much of a kept partial the server's per-block digests prove (where a resume
    starts); None when the server offers none (or VERIFY_SOURCE=off): then the
    caller's sampled comparison decides."""
    from app.server.remote import remote_path

    if settings.verify_source == "off":
        return None
    timeout = hash_timeout(settings.io_timeout, have)
    proof = prove_prefix(conn, remote_path(settings, name), partial, have, timeout)
    return None if proof is None else proof.proven_bytes
