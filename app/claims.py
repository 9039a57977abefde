"""Published names: one name in SERVER_DIR belongs to one remote file of the feed.

With DECRYPT=gpg, ``20250101.IPI.gpg`` is published as ``20250101.IPI``, the name
another remote file may have as it is. Publishing both would replace the first
delivery with the second in SERVER_DIR and LOCAL_DIR, and REMOTE_AFTER=delete
would then remove both sources: one file lost for good. So a published name that
the ledger already gives to another remote file, or that a file due before it in
this run takes, is a conflict: that file fails, named with both remote names, and
is neither fetched, published nor removed from the server. Pure: the planner
(app/planning.py) applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from app.config import Settings
from app.selection import RemoteEntry
from app.storage.decrypt import output_name


def published_name(name: str, settings: Settings) -> str:
    """The name ``name`` is published under in SERVER_DIR."""
    if settings.decrypt == "gpg":
        return output_name(name, settings.decrypt_suffixes) or name
    return name


def conflicts(
    due: Sequence[RemoteEntry],
    publishers: Mapping[str, tuple[str, ...]],
    publish_as: Callable[[str], str],
) -> dict[str, str]:
    """The due files whose published name is taken: remote name -> why, naming the other.

    ``publishers`` is the ledger's published name -> remote names; the first due
    file to take a free name keeps it, in plan order.
    """
    taken: dict[str, str] = {}
    refused: dict[str, str] = {}
    for entry in due:
        target = publish_as(entry.name)
        holders = [h for h in publishers.get(target, ()) if h != entry.name]
        if holders:
            refused[entry.name] = (
                f"not fetched: it would be published as {target!r}, which holds the delivery of"
                f" {holders[0]!r} (in the ledger); both stay on the server"
            )
        elif target in taken and taken[target] != entry.name:
            refused[entry.name] = (
                f"not fetched: it would be published as {target!r}, as {taken[target]!r} due before it"
                " in this run is; it stays on the server"
            )
        else:
            taken[target] = entry.name
    return refused
