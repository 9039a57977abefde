"""Which server-supplied names are safe to use as local file names."""

from __future__ import annotations

import pytest

from app.names import MAX_NAME_BYTES, invalid_name_reason


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
