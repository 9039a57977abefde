"""`make demo` keeps out of volumes/, `make compose-keys` repairs ownership inside it, and
the placeholder volumes/server/.gitkeep is no unknown file to `audit`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Runner, Server

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="ownership is repaired by root only")


def tree(directory: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path under ``directory`` with its owner, group, mode and size."""
    found: dict[str, tuple[int, int, int, int]] = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(directory))] = (st.st_uid, st.st_gid, st.st_mode, st.st_size)
    return found


def test_make_demo_runs_in_a_directory_of_its_own_and_leaves_volumes_untouched(tmp_path: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe and "volumes" not in recipe.group(1)
    before = tree(REPO / "volumes")
    place = tmp_path / "demo"

    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--dir", str(place)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all samples downloaded, verified and published" in proc.stdout
    assert tree(REPO / "volumes") == before, "the demo wrote into volumes/"
    assert sorted(p.name for p in (place / "server").iterdir()) == ["20250426.IPI", "20250427.IPI", "20250428.IPI"]
    assert (place / "state" / "last_file.txt").read_text().strip() == "20250428.IPI"


def test_the_default_demo_directory_is_ignored_by_git() -> None:
    proc = subprocess.run(["git", "check-ignore", "-q", "demo/local/x"], cwd=REPO)
    assert proc.returncode == 0, "demo/ must be ignored: the demo writes there"


def _image_uid() -> tuple[int, int]:
    user = re.search(r"^USER (\d+):(\d+)\s*$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert user, "the Dockerfile runs as a numeric USER uid:gid"
    return int(user.group(1)), int(user.group(2))


def test_compose_keys_hands_the_volumes_to_the_uid_the_image_runs_as() -> None:
    script = (REPO / "tools" / "compose_keys.sh").read_text()
    uid, gid = _image_uid()
    assert f"JOB_UID={uid}\n" in script and f"JOB_GID={gid}\n" in script


@root_only
@pytest.mark.skipif(shutil.which("ssh-keygen") is None or shutil.which("openssl") is None, reason="needs ssh-keygen")
def test_compose_keys_repairs_ownership_of_everything_inside_the_volumes(tmp_path: Path) -> None:
    # A copy of the layout the script works on (it runs from the directory above tools/).
    (tmp_path / "tools").mkdir()
    shutil.copy(REPO / "tools" / "compose_keys.sh", tmp_path / "tools")
    volumes = tmp_path / "volumes"
    # What a run as root left behind: the state the container's run then could not write.
    logs = volumes / "state" / "logs"
    logs.mkdir(parents=True, mode=0o750)
    (logs / "sftp_transfer.log").write_text("a line\n")
    (logs / "sftp_transfer.log").chmod(0o640)
    (volumes / "state" / "last_file.txt").write_text("20250426.IPI\n")
    (volumes / "local").mkdir()
    (volumes / "local" / "20250426.IPI").write_bytes(b"x")
    (volumes / "server").mkdir()
    (volumes / "server" / ".gitkeep").touch()
    uid, gid = _image_uid()

    proc = subprocess.run(["bash", str(tmp_path / "tools" / "compose_keys.sh")], capture_output=True, text=True)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("local", "server", "state"):
        for path in [volumes / name, *(volumes / name).rglob("*")]:
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == (uid, gid), f"{path} still belongs to {st.st_uid}:{st.st_gid}"
            assert st.st_mode & 0o200, f"{path} is not writable by its owner"
    assert (logs / "sftp_transfer.log").read_text() == "a line\n", "what was there is kept"


@root_only
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to run as another user")
def test_compose_keys_without_root_names_what_another_user_left_and_fails(tmp_path: Path) -> None:
    base = tmp_path / "clone"
    (base / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "compose_keys.sh", base / "tools")
    for path in [base, base / "tools", base / "tools" / "compose_keys.sh"]:
        os.chown(path, 65534, 65534)
    tmp_path.chmod(0o755)
    logs = base / "volumes" / "state" / "logs"
    logs.mkdir(parents=True)
    for path in [base / "volumes", base / "volumes" / "state"]:
        os.chown(path, 65534, 65534)
    # logs stays root's: what a run as root leaves, and what nobody else can repair.

    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "tools/compose_keys.sh"],
        cwd=base,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(base)},
    )

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "  volumes/state/logs" in proc.stderr
    assert "sudo make compose-keys" in proc.stderr


def test_audit_does_not_report_a_hidden_placeholder_in_server_dir(server: Server, run: Runner) -> None:
    server.put("20250101.IPI", os.urandom(3000))
    assert run().code == 0
    (server.served / ".gitkeep").touch()
    (server.served / "stray.dat").write_bytes(b"not ours")

    result = run("audit")

    assert result.code == 1, result.output
    assert "unknown: SERVER_DIR/stray.dat" in result.stdout
    assert ".gitkeep" not in result.stdout
    (server.served / "stray.dat").unlink()
    clean = run("audit")
    assert clean.code == 0, clean.output
    assert "all files match the ledger" in clean.stdout
