#!/usr/bin/env bash
# `make compose-keys`: the one-time set-up of docker-compose.yml's test server,
# made on the spot because none of it may be committed:
#   volumes/sftp-host-keys/  the test server's host keys (kept once made, so the
#                            fingerprint is stable) and known_hosts for host "sftp"
#   volumes/secrets/         the login password (the job reads it as a secret
#                            file) and the server's users.conf holding it encrypted
#   volumes/remote/          a few small sample YYYYMMDD.IPI files, if it has none
# and makes volumes/local, server and state writable by the image's UID 10001.
# Running it again keeps what exists and repairs permissions.
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

if [ "$(id -u)" = 0 ]; then
    chown "$JOB_UID:$JOB_GID" "$V/local" "$V/server" "$V/state" "$password"
    chmod 0400 "$password"
else
    # Without root, hand the folders and the test password to UID 10001 by mode.
    chmod 0777 "$V/local" "$V/server" "$V/state"
    chmod 0644 "$password"
    echo "compose-keys: volumes/local, server and state are now world-writable, and the test password"
    echo "  world-readable, for the container's UID 10001; files the job writes belong to that UID."
fi
echo "compose-keys: ready. Next: docker compose run --rm downloader"
