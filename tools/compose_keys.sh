#!/usr/bin/env bash
# `make compose-keys`: the one-time set-up of docker-compose.yml's test server,
# made on the spot because none of it may be committed:
#   volumes/sftp-host-keys/  the test server's host keys (kept once made, so the
#                            fingerprint is stable) and known_hosts for host "sftp"
#   volumes/secrets/         the login password (the job reads it as a secret
#                            file) and the server's users.conf holding it encrypted
#   volumes/remote/          a few small sample YYYYMMDD.IPI files, if it has none
# and makes volumes/local, server and state, and everything in them, writable by
# the image's UID 10001 (the Dockerfile's USER; a test keeps the two in step).
# Running it again keeps what exists and repairs ownership and permissions:
#   as root:  everything inside volumes/local, server and state is given to
#             10001:10001 (chown -R) and made writable by that owner, so
#             state that another user left there (a root-owned state/logs) no
#             longer makes the container's run exit 5;
#   otherwise: the three folders (and what in them you own) are made writable by
#             mode; what another user owns cannot be changed without root, so
#             it names those paths and exits 1: run `sudo make compose-keys`.
set -euo pipefail
cd "$(dirname "$0")/.."

JOB_UID=10001
JOB_GID=10001
SFTP_USER=ipi # as in .env.example; docker-compose.yml serves /home/ipi/upload
V=volumes

for tool in ssh-keygen openssl; do
    command -v "$tool" >/dev/null || { echo "compose-keys: $tool is missing (openssh-client, openssl)" >&2; exit 1; }
done
mkdir -p "$V/sftp-host-keys" "$V/secrets" "$V/remote" "$V/local" "$V/server" "$V/state"

for type in ed25519 rsa; do
    key="$V/sftp-host-keys/ssh_host_${type}_key"
    if [ ! -s "$key" ]; then
        bits=()
        [ "$type" = rsa ] && bits=(-b 3072)
        rm -f "$key" "$key.pub"
        ssh-keygen -q -t "$type" "${bits[@]}" -N '' -C sftp-ipi-test-server -f "$key"
        echo "compose-keys: made $key"
    fi
done
known_hosts="$V/sftp-host-keys/known_hosts"
{
    echo "# The compose test server, as the downloader reaches it (host sftp, port 22)."
    for type in ed25519 rsa; do
        printf 'sftp %s\n' "$(cut -d' ' -f1,2 "$V/sftp-host-keys/ssh_host_${type}_key.pub")"
    done
} >"$known_hosts"
chmod 0644 "$known_hosts"
ssh-keygen -l -f "$V/sftp-host-keys/ssh_host_ed25519_key.pub" | sed 's/^/compose-keys: test server host key /'

password="$V/secrets/sftp_password"
if [ ! -s "$password" ]; then
    (umask 077 && openssl rand -hex 24 >"$password")
    echo "compose-keys: made a random password in $password"
fi
hash=$(head -n 1 "$password" | tr -d '\r\n' | openssl passwd -6 -stdin)
(umask 077 && printf '%s:%s:e:%s:%s\n' "$SFTP_USER" "$hash" "$JOB_UID" "$JOB_GID" >"$V/secrets/sftp_users.conf")

shopt -s nullglob
samples=("$V/remote"/*.IPI)
if [ "${#samples[@]}" -eq 0 ]; then
    for spec in 20250426:262144 20250427:524288 20250428:1048576; do
        file="$V/remote/${spec%%:*}.IPI"
        head -c "${spec##*:}" /dev/urandom >"$file"
        # Older than MIN_FILE_AGE, so the first run takes them at once.
        touch -d '2 hours ago' "$file"
    done
    echo "compose-keys: made sample files in $V/remote"
fi
chmod 0755 "$V/remote"
chmod 0644 "$V/remote"/*

data=("$V/local" "$V/server" "$V/state")
if [ "$(id -u)" = 0 ]; then
    # Everything inside, not only the folders: the job rewrites its state files and
    # creates files beside them, and a root-owned state/logs stops it at once.
    chown -R "$JOB_UID:$JOB_GID" "${data[@]}" "$password"
    find "${data[@]}" -type d -exec chmod u+rwx {} +
    find "${data[@]}" -type f -exec chmod u+rw {} +
    chmod 0400 "$password"
    echo "compose-keys: everything in volumes/local, server and state now belongs to $JOB_UID:$JOB_GID"
else
    # Without root, hand the folders and the test password to UID 10001 by mode.
    chmod 0777 "${data[@]}"
    chmod 0644 "$password"
    # What we own inside them too; what another user owns is left, and named.
    find "${data[@]}" -mindepth 1 -user "$(id -u)" -type d -exec chmod 0777 {} +
    find "${data[@]}" -mindepth 1 -user "$(id -u)" -type f -exec chmod 0666 {} +
    foreign=$(find "${data[@]}" -mindepth 1 ! -user "$(id -u)" ! -user "$JOB_UID" -print)
    echo "compose-keys: volumes/local, server and state are now world-writable, and the test password"
    echo "  world-readable, for the container's UID $JOB_UID; files the job writes belong to that UID."
    if [ -n "$foreign" ]; then
        echo "compose-keys: these belong to another user, and the container cannot write them:" >&2
        printf '%s\n' "$foreign" | sed 's/^/  /' >&2
        echo "  run sudo make compose-keys to give them to $JOB_UID:$JOB_GID" >&2
        exit 1
    fi
fi
echo "compose-keys: ready. Next: docker compose run --rm downloader"
