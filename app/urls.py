"""URLs that carry credentials (METRICS_PUSHGATEWAY_URL, NOTIFY_WEBHOOK_URL), kept out of messages at the source.

Userinfo (``user:password@``), the path (Slack and Teams webhooks carry their
token there), the query and the fragment are all treated as secret: a message
shows a URL only as ``scheme://host:port``, and an error is described by its
class plus those words of its text that share nothing with a secret part.
Library errors echo parts of a URL ("nonnumeric port: 'PushPw-123@127.0.0.1'"),
so a last-resort mask of the whole URL is not enough.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from dataclasses import dataclass

# A word of an error's text that shares this many characters in a row with a
# secret part of the URL is left out: long enough that ordinary words ("port",
# "error") do not collide, short enough to catch a partial echo of a password.
_SHARED_RUN = 4
# Most characters of an error's text kept: it is one log line.
_REASON_CHARS = 200
_QUOTED = re.compile(r"""'[^']*'|"[^"]*\"""")


@dataclass(frozen=True)
class Credentialed:
    """A URL split into what may be sent as is and the basic-auth credentials it held."""

    url: str
    username: str | None
    password: str | None

    def authorization(self) -> str | None:
        """The HTTP Basic Authorization header value, or None without credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def split_credentials(url: str) -> Credentialed:
    """``url`` without its userinfo, and the (percent-decoded) user and password.

    urllib sends no userinfo: it takes ``user:pw@host`` for a host and fails on it,
    echoing the password in its error. Credentials go in a header instead.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        # Unusable as it is; the request will fail, and its error is told without the URL.
        return Credentialed(url, None, None)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return Credentialed(url, None, None)
    user, colon, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return Credentialed(bare, urllib.parse.unquote(user), urllib.parse.unquote(password) if colon else None)


def safe_url(url: str) -> str:
    """``scheme://host:port`` of ``url``: nothing that may hold a credential."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<unparseable URL>"
    if not host:
        return "<URL without a host>"
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}" + (f":{port}" if port is not None else "")


def secret_parts(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that may hold a credential, each as it appears in the URL and decoded."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return (url,)
    userinfo, _, _ = parts.netloc.rpartition("@")
    found = [userinfo, *userinfo.split(":", 1), parts.path, parts.query, parts.fragment]
    found += [value for _, value in urllib.parse.parse_qsl(parts.query)]
    decoded = [urllib.parse.unquote(p) for p in found]
    return tuple(dict.fromkeys(p for p in (*found, *decoded) if p))


def reason(exc: BaseException, url: str) -> str:
    """One line describing ``exc``, raised while using ``url``, that holds no part of its secrets."""
    text = str(exc).strip().splitlines()
    if not text:
        return exc.__class__.__name__
    # Quoted text in a library error is the value it choked on: a piece of the URL.
    line = _QUOTED.sub("'...'", text[0])
    secrets = secret_parts(url)
    words = ["..." if _shares_a_run(word, secrets) else word for word in line.split(" ")]
    return f"{exc.__class__.__name__}: {' '.join(words)[:_REASON_CHARS]}"


def _shares_a_run(word: str, secrets: tuple[str, ...]) -> bool:
    for secret in secrets:
        if len(secret) < _SHARED_RUN:
            if secret in word and len(secret) == len(word.strip("'\"()<>[]:,;.")):
                return True
            continue
        runs = {secret[i : i + _SHARED_RUN] for i in range(len(secret) - _SHARED_RUN + 1)}
        if any(word[i : i + _SHARED_RUN] in runs for i in range(len(word) - _SHARED_RUN + 1)):
            return True
    return False
