"""Free space: whether a file can fit in LOCAL_DIR and SERVER_DIR before it is downloaded.

A file that cannot fit fails at once with exit 5, naming the bytes it needs and the
bytes free, instead of filling the disk first: a full LOCAL_DIR also stops the
logs, the report and every other file, and the partial it leaves would be fetched
into the same full disk again by the next run.

What a file needs (``needs``): the bytes not yet in LOCAL_DIR (its listed size less
a partial kept for it), a decrypted file's plaintext too (estimated at the encrypted
size: the real one is known only once decrypted, and is bounded by
DECRYPT_MAX_RATIO and DECRYPT_MAX_SIZE), and its copy in SERVER_DIR, unless that
copy shares LOCAL_DIR's blocks (PUBLISH_METHOD=hardlink, or a clone on the same
file system). Two directories on one file system draw on one free space, so it
is counted once, against the sum of both needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import LocalStorageError


@dataclass(frozen=True)
class Volume:
    """A directory's file system: its device and the bytes an unprivileged writer may still use."""

    label: str  # "LOCAL_DIR /data/local", for messages
    device: int
    free: int


@dataclass(frozen=True)
class Need:
    """What one file takes: bytes in LOCAL_DIR and bytes in SERVER_DIR."""

    local: int
    server: int


# -- pure -------------------------------------------------------------------------------


def needs(size: int, kept: int, *, decrypts: bool, shares_blocks: bool) -> Need:
    """What a file of ``size`` listed bytes needs, ``kept`` of them already in LOCAL_DIR."""
    download = max(size - kept, 0)
    plaintext = size if decrypts else 0
    return Need(local=download + plaintext, server=0 if shares_blocks else size)


def shortage(name: str, need: Need, local: Volume, server: Volume, taken: dict[int, int]) -> str | None:
    """Why ``name`` cannot fit (the bytes needed and free), or None. ``taken`` holds, per
    device, the bytes already promised to files started since ``free`` was measured."""
    if local.device == server.device:
        wanted = need.local + need.server
        free = local.free - taken.get(local.device, 0)
        if wanted > free:
            return (
                f"{name}: needs {wanted} bytes ({need.local} in {local.label}, {need.server} in {server.label},"
                f" one file system) and {max(free, 0)} bytes are free there; not downloading it"
            )
        return None
    for volume, wanted in ((local, need.local), (server, need.server)):
        free = volume.free - taken.get(volume.device, 0)
        if wanted > free:
            free = max(free, 0)
            return f"{name}: needs {wanted} bytes in {volume.label} and {free} bytes are free there; not downloading it"
    return None


# -- I/O --------------------------------------------------------------------------------


def measure(label: str, directory: Path) -> Volume:
    try:
        st = os.statvfs(directory)
        device = os.stat(directory).st_dev
    except OSError as exc:
        raise LocalStorageError(f"cannot measure the free space of {label} {directory}: {exc.strerror}") from None
    return Volume(f"{label} {directory}", device, st.f_bavail * st.f_frsize)


@dataclass
class Room:
    """The free space of LOCAL_DIR and SERVER_DIR as measured once, less what each file
    started since will take: the files of one batch are checked without a statvfs each,
    and together, since none of them is on disk yet."""

    local: Volume
    server: Volume
    taken: dict[int, int] = field(default_factory=dict)

    @classmethod
    def measured(cls, local_dir: Path, server_dir: Path) -> Room:
        return cls(measure("LOCAL_DIR", local_dir), measure("SERVER_DIR", server_dir))

    @property
    def same_file_system(self) -> bool:
        return self.local.device == self.server.device

    def take(self, name: str, need: Need) -> None:
        """Promise ``need`` to ``name``, or raise LocalStorageError (exit 5) if it cannot fit."""
        why = shortage(name, need, self.local, self.server, self.taken)
        if why is not None:
            raise LocalStorageError(why)
        self.taken[self.local.device] = self.taken.get(self.local.device, 0) + need.local
        self.taken[self.server.device] = self.taken.get(self.server.device, 0) + need.server
