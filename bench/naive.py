"""The original script's approach, for comparison: sequential 2 MiB ``SFTPFile.read()`` calls.

python bench/naive.py HOST PORT USER KEY_FILE KNOWN_HOSTS REMOTE_PATH LOCAL_PATH
"""

from __future__ import annotations

import sys

import paramiko

CHUNK = 2 * 1024 * 1024


def main() -> None:
    host, port, user, key_file, known_hosts, remote, local = sys.argv[1:8]
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host, int(port), user, key_filename=key_file, look_for_keys=False, allow_agent=False)
    sftp = client.open_sftp()
    size = sftp.stat(remote).st_size or 0
    with sftp.open(remote, "rb") as src, open(local, "ab") as dst:
        while dst.tell() < size:
            data = src.read(CHUNK)
            if not data:
                break
            dst.write(data)
    client.close()


if __name__ == "__main__":
    main()
