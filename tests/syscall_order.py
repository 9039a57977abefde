"""Reading ``strace -f -ttt -T`` output: was every rename to a final name preceded by a
sync that covered the bytes of the file renamed?

A sync covers a file when it started after the file's last write (or mtime change)
ended, and ended before the rename started: a ``syncfs`` (the whole file system),
or an ``fsync``/``fdatasync`` of a descriptor of that very file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "PID SECONDS.MICROS rest": the start of each call, with -ttt.
_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(?:\s.*?)?\s+<([\d.]+)>$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
WRITES = frozenset({"write", "pwrite64", "writev", "pwritev", "pwritev2", "copy_file_range", "utimensat"})
SYNCS = frozenset({"syncfs", "fsync", "fdatasync"})
RENAMES = frozenset({"rename", "renameat", "renameat2"})
TRACED = "openat,close,write,pwrite64,writev,copy_file_range,utimensat,syncfs,fsync,fdatasync,rename,renameat,renameat2"


@dataclass(frozen=True)
class Call:
    pid: int
    start: float
    end: float
    name: str
    args: str
    result: int | None


def parse(text: str) -> list[Call]:
    """Every completed call in ``text``, joined across <unfinished ...>/<... resumed>, by start."""
    calls: list[Call] = []
    unfinished: dict[int, tuple[float, str]] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        pid, start, rest = int(m[1]), float(m[2]), m[3]
        if rest.endswith("<unfinished ...>"):
            unfinished[pid] = (start, rest.removesuffix("<unfinished ...>").rstrip())
            continue
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            if pid not in unfinished:
                continue
            start, head = unfinished.pop(pid)
            rest = head + resumed[2]
        call = _CALL.match(rest)
        if call is None:
            continue
        result = None if call[3] == "?" else int(call[3])
        calls.append(Call(pid, start, start + float(call[4]), call[1], call[2], result))
    calls.sort(key=lambda c: c.start)
    return calls


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _fd_arg(args: str, index: int = 0) -> int | None:
    parts = [p.strip() for p in args.split(",")]
    try:
        return int(parts[index])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Rename:
    temp: str
    final: str
    start: float
    covered: bool


def renames_and_cover(calls: list[Call], finals: set[str]) -> list[Rename]:
    """Each rename to a name in ``finals``, with whether a sync covered its file's bytes."""
    # One process: its threads share descriptors. Name open on each descriptor, by time.
    open_as: dict[int, str] = {}
    last_write: dict[str, float] = {}
    synced: dict[str, list[tuple[float, float]]] = {}  # file -> (start, end) of its own syncs
    whole: list[tuple[float, float]] = []  # syncfs calls
    out: list[Rename] = []
    for c in calls:
        if c.result is not None and c.result < 0:
            continue
        if c.name == "openat" and c.result is not None:
            names = _QUOTED.findall(c.args)
            if names and ("O_WRONLY" in c.args or "O_RDWR" in c.args):
                open_as[c.result] = _basename(names[0])
            else:
                open_as.pop(c.result, None)
        elif c.name == "close":
            fd = _fd_arg(c.args)
            if fd is not None:
                open_as.pop(fd, None)
        elif c.name in WRITES:
            fd = _fd_arg(c.args, 2 if c.name == "copy_file_range" else 0)
            if fd is not None and fd in open_as:
                name = open_as[fd]
                last_write[name] = max(last_write.get(name, 0.0), c.end)
        elif c.name == "syncfs":
            whole.append((c.start, c.end))
        elif c.name in SYNCS:
            fd = _fd_arg(c.args)
            if fd is not None and fd in open_as:
                synced.setdefault(open_as[fd], []).append((c.start, c.end))
        elif c.name in RENAMES:
            names = [_basename(n) for n in _QUOTED.findall(c.args)]
            if len(names) != 2 or names[1] not in finals:
                continue
            temp, final = names
            written = last_write.get(temp, 0.0)
            syncs = [*whole, *synced.get(temp, [])]
            covered = written > 0 and any(s >= written and e <= c.start for s, e in syncs)
            out.append(Rename(temp, final, c.start, covered))
    return out
