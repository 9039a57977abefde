"""Moments as the run report, the ledger and the refetch notes write them: UTC, to the second."""

from __future__ import annotations

import datetime as dt


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")
