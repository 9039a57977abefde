"""Which server-supplied names are safe to use as local file names."""

from __future__ import annotations

import pytest

from app.names import MAX_NAME_BYTES, invalid_name_reason, shown


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param(".", id="dot"),
        pytest.param("..", id="dotdot"),
        pytest.param(".hidden", id="hidden"),
        pytest.param(".20250428.IPI", id="hidden-ipi"),
        pytest.param("a/b", id="slash"),
        pytest.param("../20250428.IPI", id="parent-traversal"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\rb", id="carriage-return"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("x" * 256, id="256-bytes"),
        pytest.param("é" * 128, id="256-bytes-multibyte"),
        pytest.param("x.part", id="part"),
        pytest.param("20250428.IPI.part", id="ipi-part"),
        pytest.param("20250428.IPI.part.json", id="part-json"),
        pytest.param("a\udc80b", id="lone-surrogate"),
        pytest.param("2025\x9b31m.IPI", id="c1-csi"),
        pytest.param("a\x80b", id="c1-first"),
        pytest.param("a\x9fb", id="c1-last"),
        pytest.param("a\u2028b", id="line-separator"),
        pytest.param("a\u2029b", id="paragraph-separator"),
        pytest.param("evil\u202egpj.IPI", id="bidi-override"),
        pytest.param("a\u202ab", id="bidi-embedding"),
        pytest.param("a\u2066b\u2069", id="bidi-isolate"),
        pytest.param("a\u200fb", id="rtl-mark"),
        pytest.param("a\u061cb", id="arabic-letter-mark"),
        pytest.param("a\u200bb.IPI", id="zero-width-space"),
        pytest.param("a\u00adb.IPI", id="soft-hyphen"),
        pytest.param("\ufeff20250428.IPI", id="leading-bom"),
        pytest.param("a\u2060b.IPI", id="word-joiner"),
    ],
)
def test_unsafe_names_have_a_reason(name: str) -> None:
    reason = invalid_name_reason(name)
    assert isinstance(reason, str)
    assert reason


@pytest.mark.parametrize(
    "name",
    [
        "20250428.IPI",
        "IPI_20250428.dat",
        "a b.IPI",
        "x.partial",
        "part",
        "x" * MAX_NAME_BYTES,
        "é" * 127 + "x",  # 255 bytes
        "20250428..IPI",
    ],
)
def test_safe_names_have_no_reason(name: str) -> None:
    assert invalid_name_reason(name) is None


def test_reasons_explain_the_problem() -> None:
    assert invalid_name_reason("a/b") == "contains a path separator"
    assert invalid_name_reason("x" * 256) == "longer than 255 bytes"
    assert invalid_name_reason("..") == "a relative directory reference"


def test_c1_and_bidi_reasons_name_the_problem() -> None:
    assert invalid_name_reason("a\x9bb") == "contains control characters"
    assert invalid_name_reason("a\u202eb") == "contains bidirectional text controls"


@pytest.mark.parametrize("name", ["20250428.IPI", "IPI 2025-04-28 é.dat", "x.partial"])
def test_ordinary_names_are_shown_as_they_are(name: str) -> None:
    assert shown(name) == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a\x1b[31mb", "'a\\x1b[31mb'"),
        ("a\x9bb", "'a\\x9bb'"),
        ("evil\u202egpj.IPI", "'evil\\u202egpj.IPI'"),
        ("a\u2066b", "'a\\u2066b'"),
        ("a\u200bb", "'a\\u200bb'"),
        ("a\nb", "'a\\nb'"),
        ("a\udc80b", "'a\\udc80b'"),
        ("", "''"),
        ("a\\x9b", "'a\\\\x9b'"),
    ],
)
def test_other_names_are_shown_quoted_and_escaped(name: str, expected: str) -> None:
    text = shown(name)
    assert text == expected
    assert text.isascii() and text.isprintable()
