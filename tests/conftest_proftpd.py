"""The ``proftpd`` fixture: a real ProFTPD mod_sftp per test (see proftpd.py); conftest.py imports it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from proftpd import DEBIAN_PACKAGES, Proftpd, ensure_installed, new_base


@pytest.fixture
def proftpd() -> Iterator[Proftpd]:
    """ProFTPD serving a chrooted directory to a virtual user with a random password."""
    if os.geteuid() != 0:
        pytest.skip("the ProFTPD fixture needs root (its sessions switch to a virtual uid)")
    if ensure_installed() is None:
        pytest.fail(f"ProFTPD with mod_sftp is not installed and apt-get could not install {' '.join(DEBIAN_PACKAGES)}")
    server = Proftpd(base=new_base())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
