"""The pure parts of source proof: checksum files, templates, companions, markers, policy, settings."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from dataclasses import replace

import paramiko
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import CHECKSUM_AUTO, Settings, load_settings
from app.errors import ConfigError, RemoteFileError
from app.server.pipeline import DigestUnparseableError, _check_file_reply, split_digests
from app.server.proof import (
    MAX_PREFIX_BLOCKS,
    ChecksumFileError,
    ChecksumSource,
    Expected,
    NoProofError,
    ProofMismatchError,
    algorithm_hint,
    awaited_marker,
    command_name,
    find_checksum_sources,
    is_companion,
    is_ready,
    parse_checksum_file,
    plan,
    prefix_layout,
    render,
    settle,
    verdict,
)

MiB = 1024 * 1024
NAME = "IPI_20250428.dat"
DATA = b"the partner's bytes\n"
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
BASE = {"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p"}


def make(**env: str) -> Settings:
    return load_settings({**BASE, **env})


# -- Parsing ----------------------------------------------------------------------------


def test_gnu_text_and_binary_lines() -> None:
    text = f"{SHA256}  {NAME}\n{MD5 * 2}  other.dat\n{SHA256} *bin name.dat\n"
    parsed = parse_checksum_file(text.encode(), "CHECKSUMS")
    expected = parsed.expected(NAME, per_file=False)
    assert expected == Expected("sha256", SHA256, "checksum-file", "CHECKSUMS")
    assert expected.verified_by == "checksum-file:CHECKSUMS"
    assert parsed.expected("bin name.dat", per_file=False) is not None
    assert parsed.expected("missing.dat", per_file=False) is None


def test_bsd_tags_including_openssl_style() -> None:
    text = f"SHA256 ({NAME}) = {SHA256}\nMD5 (b.dat) = {MD5}\nSHA2-512(c (1).dat)= {SHA512}\n"
    parsed = parse_checksum_file(text.encode(), "CHECKSUMS")
    assert parsed.expected(NAME, per_file=False).algorithm == "sha256"  # type: ignore[union-attr]
    assert parsed.expected("b.dat", per_file=False).algorithm == "md5"  # type: ignore[union-attr]
    got = parsed.expected("c (1).dat", per_file=False)
    assert got is not None and (got.algorithm, got.hexdigest) == ("sha512", SHA512)


def test_a_bare_digest_alone_in_a_per_file_checksum_file() -> None:
    parsed = parse_checksum_file(f"{SHA256.upper()}\r\n".encode(), f"{NAME}.sha256")
    assert parsed.expected(NAME, per_file=True) == Expected("sha256", SHA256, "checksum-file", f"{NAME}.sha256")
    # A bare digest in a manifest belongs to no file in particular.
    assert parsed.expected(NAME, per_file=False) is None


def test_blank_comment_and_bom_lines_are_ignored() -> None:
    text = f"\ufeff# made by the partner\n\n   \n  # indented comment\n{SHA256}  {NAME}\n"
    assert parse_checksum_file(text.encode(), "SHA256SUMS").expected(NAME, per_file=False) is not None


def test_coreutils_escaped_names_with_backslash_and_newline() -> None:
    odd = "a\\b\nc.dat"
    parsed = parse_checksum_file(f"\\{SHA256}  a\\\\b\\nc.dat\n".encode(), "SHA256SUMS")
    assert parsed.expected(odd, per_file=False) is not None


def test_a_per_file_checksum_naming_the_file_with_a_directory_counts() -> None:
    parsed = parse_checksum_file(f"{SHA256}  /out/{NAME}\n".encode(), f"{NAME}.sha256")
    assert parsed.expected(NAME, per_file=True) is not None


def test_a_per_file_checksum_naming_another_file_is_an_error() -> None:
    parsed = parse_checksum_file(f"{SHA256}  IPI_20250101.dat\n".encode(), f"{NAME}.sha256")
    with pytest.raises(ChecksumFileError, match=r"is for 'IPI_20250101\.dat'"):
        parsed.expected(NAME, per_file=True)


@pytest.mark.parametrize(
    ("text", "source", "reason"),
    [
        (f"{SHA256}\n", f"{NAME}.md5", "is not md5"),
        (f"{MD5}  {NAME}\n", "SHA256SUMS", "is not sha256"),
        ("abc123  x.dat\n", "CHECKSUMS", "not a known digest"),
        (f"this is not a checksum {NAME}\n", "CHECKSUMS", "line 1 is not a checksum line"),
        (f"WHIRLPOOL ({NAME}) = {SHA256}\n", "CHECKSUMS", "unknown algorithm"),
        (f"{SHA256}  {NAME}\n{MD5 * 2}  {NAME}\n", "SHA256SUMS", "a second, different digest"),
        (f"{SHA256}\n{SHA256}\n", f"{NAME}.sha256", "must be alone"),
        (f"{SHA256}\n{SHA256}  {NAME}\n", f"{NAME}.sha256", "must be alone"),
        ("# only a comment\n\n", "SHA256SUMS", "holds no checksums"),
        ("", f"{NAME}.sha256", "holds no checksums"),
        ("\x00\x01\x02", f"{NAME}.md5", "line 1"),
    ],
)
def test_malformed_checksum_files_are_named_failures(text: str, source: str, reason: str) -> None:
    with pytest.raises(ChecksumFileError, match=reason) as caught:
        parse_checksum_file(text.encode(), source)
    assert source in str(caught.value)


def test_an_oversized_checksum_file_is_refused() -> None:
    with pytest.raises(ChecksumFileError, match="larger than"):
        parse_checksum_file(b"#" * (16 * MiB + 1), "SHA256SUMS")


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), source=st.sampled_from(["SHA256SUMS", "x.md5", "CHECKSUMS", "x.SHA512"]))
def test_the_parser_raises_nothing_but_checksum_file_error(data: bytes, source: str) -> None:
    try:
        parsed = parse_checksum_file(data, source)
    except ChecksumFileError:
        return
    for name in parsed.entries:
        parsed.expected(name, per_file=False)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60), max_size=8))
def test_the_parser_survives_arbitrary_text_lines(lines: list[str]) -> None:
    text = "\n".join(lines)
    with contextlib.suppress(ChecksumFileError):
        parse_checksum_file(text.encode("utf-8"), "CHECKSUMS")


@pytest.mark.parametrize(
    ("source", "algorithm"),
    [("x.dat.sha256", "sha256"), ("x.dat.MD5", "md5"), ("SHA512SUMS", "sha512"), ("sha1sum", "sha1"),
     ("my file.sha1", "sha1"), ("CHECKSUMS", None), ("x.dat.txt", None)],
)  # fmt: skip
def test_algorithm_hints(source: str, algorithm: str | None) -> None:
    assert algorithm_hint(source) == algorithm


def test_commands_are_named_by_their_program() -> None:
    assert command_name("/usr/bin/sha256sum --binary") == "sha256sum"
    assert algorithm_hint(command_name("/usr/bin/sha256sum --binary")) == "sha256"
    assert command_name("openssl dgst -sha512") == "openssl"


# -- Templates, sources, companions, markers ---------------------------------------------


def test_templates_render_name_and_stem() -> None:
    assert render("{name}.sha256", "a.tar.gz") == "a.tar.gz.sha256"
    assert render("{stem}.ok", "a.tar.gz") == "a.tar.ok"
    assert render("SHA256SUMS", "a.dat") == "SHA256SUMS"
    assert render("{name}.done", "{odd}.dat") == "{odd}.dat.done", "braces in the data file's name stay literal"


def test_find_checksum_sources_auto_order_per_file_then_manifests() -> None:
    listing = {NAME, f"{NAME}.md5", f"{NAME}.SHA256", "MD5SUMS", "SHA256SUMS", "unrelated.sha256"}
    found = find_checksum_sources(listing, NAME, CHECKSUM_AUTO)
    assert found == [
        ChecksumSource(f"{NAME}.SHA256", per_file=True),
        ChecksumSource(f"{NAME}.md5", per_file=True),
        ChecksumSource("SHA256SUMS", per_file=False),
        ChecksumSource("MD5SUMS", per_file=False),
    ]
    assert find_checksum_sources(listing, NAME, ()) == []
    assert find_checksum_sources(["IPI_20250428.md5"], NAME, ("{stem}.md5",)) == [
        ChecksumSource("IPI_20250428.md5", per_file=True)
    ]


def test_companions_are_checksum_files_and_markers_even_without_their_data_file() -> None:
    s = make(READY_MARKER="{name}.done")
    for companion in (f"{NAME}.sha256", f"{NAME}.MD5", "SHA256SUMS", "CHECKSUMS", f"{NAME}.done", "orphan.sha512"):
        assert is_companion(companion, s), companion
    for data in (NAME, "SHA256SUMS.dat", "IPI_sha256.dat", f"{NAME}.done.part"):
        assert not is_companion(data, s), data
    assert not is_companion(f"{NAME}.sha256", make(CHECKSUM_FILES="off"))
    assert is_companion("IPI_1.ok", make(CHECKSUM_FILES="off", READY_MARKER="{stem}.ok"))


def test_ready_marker_template_decides_and_names_what_is_awaited() -> None:
    s = make(READY_MARKER="{stem}.ok")
    assert awaited_marker(NAME, {NAME}, s) == "IPI_20250428.ok"
    assert not is_ready(NAME, {NAME}, s)
    assert is_ready(NAME, {NAME, "IPI_20250428.ok"}, s)
    assert is_ready(NAME, {NAME}, make()), "no READY_MARKER: every file is ready"


def test_ready_marker_checksum_waits_for_a_checksum_file() -> None:
    s = make(READY_MARKER="checksum", CHECKSUM_FILES="{name}.sha256")
    assert awaited_marker(NAME, {NAME}, s) == "its checksum file"
    assert is_ready(NAME, {NAME, f"{NAME}.sha256"}, s)
    assert not is_ready(NAME, {NAME, "SHA256SUMS"}, s), "only the configured checksum files count"


# -- Policy -----------------------------------------------------------------------------


def test_plan_strongest_first_and_off_means_nothing() -> None:
    sources = [ChecksumSource("SHA256SUMS", per_file=False)]
    assert plan("auto", sources, "sha256sum") == ("check-file-handle", "checksum-file", "command")
    assert plan("required", [], None) == ("check-file-handle",)
    assert plan("off", sources, "sha256sum") == ()


def test_settle_falls_back_to_size_and_mtime_unless_required() -> None:
    assert settle("auto", NAME, ["check-file-handle"]) == "size+mtime"
    assert settle("off", NAME, []) == "size+mtime"
    with pytest.raises(NoProofError, match=r"IPI_20250428.dat.*VERIFY_SOURCE=required.*check-file-handle"):
        settle("required", NAME, ["check-file-handle"])


def test_verdict_names_the_method_or_the_mismatch() -> None:
    expected = Expected("sha256", SHA256.upper(), "checksum-file", "SHA256SUMS")
    assert verdict(NAME, expected, {"sha256": SHA256}) == "checksum-file:SHA256SUMS"
    with pytest.raises(ProofMismatchError, match="checksum-file:SHA256SUMS"):
        verdict(NAME, expected, {"sha256": "0" * 64})
    assert NoProofError.exit_code == ProofMismatchError.exit_code == ChecksumFileError.exit_code == 1


def test_prefix_layout_uses_whole_power_of_two_blocks_from_zero() -> None:
    assert prefix_layout(100) == (0, 0)
    assert prefix_layout(70_000) == (65_536, 1)
    assert prefix_layout(4 * MiB + 300) == (MiB, 4)
    block, count = prefix_layout(10 * 1024 * MiB + 1)
    assert count <= MAX_PREFIX_BLOCKS and block == 4 * MiB and block & (block - 1) == 0


# -- Settings ---------------------------------------------------------------------------


def test_defaults() -> None:
    s = make()
    assert s.checksum_files == CHECKSUM_AUTO
    assert (s.verify_source, s.remote_hash_command, s.ready_marker) == ("auto", None, None)


def test_settings_parse() -> None:
    s = make(
        CHECKSUM_FILES=" {name}.sha256 , SHA256SUMS ",
        VERIFY_SOURCE="Required",
        REMOTE_HASH_COMMAND=" sha256sum ",
        READY_MARKER="Checksum",
    )
    assert s.checksum_files == ("{name}.sha256", "SHA256SUMS")
    assert (s.verify_source, s.remote_hash_command, s.ready_marker) == ("required", "sha256sum", "checksum")
    assert make(CHECKSUM_FILES="OFF").checksum_files == ()
    assert replace(s, ready_marker="{name}.done").ready_marker == "{name}.done"


@pytest.mark.parametrize(
    ("env", "culprit"),
    [
        ({"CHECKSUM_FILES": "sums/{name}.sha256"}, "CHECKSUM_FILES"),
        ({"CHECKSUM_FILES": "{name}.{ext}"}, "CHECKSUM_FILES"),
        ({"CHECKSUM_FILES": "{name!r}.md5"}, "CHECKSUM_FILES"),
        ({"CHECKSUM_FILES": "{name}.md5,{name"}, "CHECKSUM_FILES"),
        ({"CHECKSUM_FILES": "{}.md5"}, "CHECKSUM_FILES"),
        ({"CHECKSUM_FILES": ","}, "CHECKSUM_FILES"),
        ({"READY_MARKER": "{name}"}, "READY_MARKER"),
        ({"READY_MARKER": "{stem}"}, "READY_MARKER"),
        ({"READY_MARKER": "done/{name}"}, "READY_MARKER"),
        ({"READY_MARKER": "{name}.done\t"}, None),
        ({"READY_MARKER": "checksum", "CHECKSUM_FILES": "off"}, "READY_MARKER=checksum"),
        ({"VERIFY_SOURCE": "always"}, "VERIFY_SOURCE"),
        ({"REMOTE_HASH_COMMAND": "sha256sum\nrm -rf /"}, "REMOTE_HASH_COMMAND"),
    ],
)
def test_bad_settings_are_one_line_naming_the_setting(env: dict[str, str], culprit: str | None) -> None:
    if culprit is None:  # surrounding white space is forgiven, as elsewhere
        assert make(**env).ready_marker == "{name}.done"
        return
    with pytest.raises(ConfigError, match=culprit) as caught:
        make(**env)
    assert "\n" not in str(caught.value)


# -- check-file-handle replies (the wire format, without a server) -------------------------


def _reply(*strings: bytes, rest: bytes) -> paramiko.Message:
    msg = paramiko.Message()
    for s in strings:
        msg.add_string(s)
    msg.add_bytes(rest)
    return paramiko.Message(msg.asbytes())


def test_check_file_replies_with_or_without_the_request_name() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert _check_file_reply(_reply(b"sha256", rest=digest), ["sha256"]) == ("sha256", [digest])
    draft = _check_file_reply(_reply(b"check-file", b"sha256", rest=digest * 3), ["sha512", "sha256"])
    assert draft == ("sha256", [digest] * 3)


@pytest.mark.parametrize(
    ("strings", "rest", "reason"),
    [
        ((b"md5",), b"\0" * 16, "not asked for"),
        ((b"sha256",), b"\0" * 33, "33 bytes for 1 digest"),
        ((b"sha256",), b"", "0 bytes"),
        ((b"\x1b[2J",), b"", "not asked for"),
    ],
)
def test_malformed_check_file_replies_are_file_errors(strings: tuple[bytes, ...], rest: bytes, reason: str) -> None:
    with pytest.raises(RemoteFileError, match=reason) as caught:
        _check_file_reply(_reply(*strings, rest=rest), ["sha256"], blocks=1)
    assert "\x1b" not in str(caught.value)


def test_mina_length_prefixed_digests_are_read_where_unambiguous() -> None:
    digests = [hashlib.sha512(bytes([i])).digest() for i in range(16)]
    mina = b"".join(struct.pack(">I", 64) + d for d in digests)
    # 16 of MINA's 68-byte elements are 1088 bytes: also 17 plain SHA-512 digests.
    assert len(mina) == 17 * 64
    assert split_digests(mina, 64, blocks=16) == digests
    assert split_digests(mina[:68], 64, blocks=1) == digests[:1]
    assert split_digests(mina[:68], 64) == digests[:1]
    assert split_digests(b"".join(digests), 64, blocks=16) == digests
    with pytest.raises(DigestUnparseableError, match="neither layout fits"):
        split_digests(struct.pack(">I", 63) + digests[0], 64, blocks=1)
    # MD5: 4 MINA elements (80 bytes) are also 5 plain digests; without a count, neither is believed.
    md5 = [hashlib.md5(bytes([i])).digest() for i in range(4)]  # nosec B324: a test vector
    both = b"".join(struct.pack(">I", 16) + d for d in md5)
    assert split_digests(both, 16, blocks=4) == md5
    with pytest.raises(DigestUnparseableError, match="both"):
        split_digests(both, 16)


_NAMES = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, marker=st.sampled_from(["{name}.done", "{stem}.ok", "{name}.ready", "READY"]))
def test_every_rendered_checksum_file_and_marker_is_a_companion(name: str, marker: str) -> None:
    s = make(READY_MARKER=marker)
    for template in (*CHECKSUM_AUTO, marker):
        companion = render(template, name)
        if companion != name:
            assert is_companion(companion, s), (template, name)
