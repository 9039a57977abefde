#!/usr/bin/env bash
# `make container-test`: the image and the Compose project, built and run for real.
#
# Uses rootful podman (Debian's 4.3, runtime runc) behind its Docker-compatible
# API socket, driven by docker-compose 1.29, so that Dockerfile and
# docker-compose.yml are used exactly as committed. No image registry is needed:
# the base image is made with debootstrap, and stand-ins for the two registry
# images the project names (tests/containers/) are built from it.
#
# In a scratch copy of the work tree it does what an operator does
# (cp .env.example .env; make compose-keys; docker compose run --rm downloader),
# then checks: a strict-host-key pull whose files match the server's by SHA-256;
# a second run with nothing due (exit 0); an unknown host key refused (exit 3);
# the Kubernetes CronJob's pod, played by `podman kube play` from the
# deploy/kubernetes manifests (ConfigMap, Secret, claims, security context,
# read-only root) against the same server, its delivered file matching by SHA-256;
# a large pull stopped by a container stop (SIGTERM to PID 1, exit 143) that the
# next run resumes; non-root UID and read-only root file system. Everything it
# starts is torn down at the end (containers, networks, volumes, images, the
# API service), pass or fail, and the image size is reported.
#
# Needs root, Debian's package mirror and PyPI (from inside image builds).
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_TAG=localhost/debian:bookworm-slim
# A neutral tag: the stand-in carries Debian's python3 (3.11), not the version
# the Dockerfile's default BASE_IMAGE names.
PYTHON_TAG=localhost/sftp-ipi-ci/python-standin:bookworm
# The stand-in for atmoz/sftp, under a neutral tag too (passed as SFTP_TEST_IMAGE).
SFTP_TAG=localhost/sftp-ipi-ci/sftp-standin:bookworm
IMAGE=sftp-ipi:latest
BIG_NAME=20250601.IPI
BIG_MIB=${CONTAINER_TEST_BIG_MIB:-512}
STOP_AFTER_MIB=32

STARTED=$(date +%s)
WORK=""
SERVICE_PID=""
RUNTIME_LEFTOVERS=()
COMPOSE_UP=""
NETAVARK_CHAINS_BEFORE=""
IP_FORWARD_BEFORE=""

say() { printf '[container-test %4ss] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
fail() {
    say "FAILED: $*"
    exit 1
}

cleanup() {
    local code=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$WORK" ]; then
        say "tearing down"
        if [ -n "$COMPOSE_UP" ]; then
            (cd "$WORK/project" && timeout 120 docker-compose down --volumes --rmi all --remove-orphans >>"$WORK/compose.log" 2>&1)
        fi
        if [ -n "${CONTAINERS_STORAGE_CONF:-}" ]; then
            timeout 60 podman pod rm --all --force >/dev/null 2>&1
            timeout 60 podman rm --all --force --time 5 >/dev/null 2>&1
            timeout 60 podman rmi --all --force >/dev/null 2>&1
            timeout 60 podman network prune --force >/dev/null 2>&1
        fi
        if [ -n "$SERVICE_PID" ]; then
            kill "$SERVICE_PID" 2>/dev/null
            wait "$SERVICE_PID" 2>/dev/null
        fi
        # netavark leaves its (by now empty) firewall chains behind: remove them
        # if they were not there before this test.
        if [ "$NETAVARK_CHAINS_BEFORE" = 0 ]; then remove_netavark_chains; fi
        if [ "$IP_FORWARD_BEFORE" = 0 ]; then echo 0 >/proc/sys/net/ipv4/ip_forward 2>/dev/null; fi
        for dir in "${RUNTIME_LEFTOVERS[@]}"; do
            rm -rf "$dir"
            rmdir "$(dirname "$dir")" 2>/dev/null
        done
        if [ "$code" -ne 0 ] && [ -d "$WORK" ]; then
            for log in "$WORK"/*.log; do
                [ -f "$log" ] || continue
                echo "---- last lines of $(basename "$log")"
                tail -n 40 "$log"
            done
        fi
        # Anything still mounted from the private storage goes before the files do.
        findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | xargs -r umount -l 2>/dev/null
        rm -rf "$WORK"
    fi
    if [ "$code" -eq 0 ]; then
        say "passed"
    else
        say "failed (exit $code)"
    fi
    exit "$code"
}
remove_netavark_chains() {
    local table rule chain
    for table in filter nat; do
        iptables -t "$table" -S 2>/dev/null | grep -E '^-A .*-j NETAVARK' | sed 's/^-A /-D /' |
            while IFS= read -r rule; do eval "iptables -t $table $rule" 2>/dev/null; done
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N NETAVARK/ {print $2}'); do
            iptables -t "$table" -F "$chain" 2>/dev/null
        done
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N NETAVARK/ {print $2}'); do
            iptables -t "$table" -X "$chain" 2>/dev/null
        done
    done
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step_started=0
step() {
    step_started=$(date +%s)
    say "$*"
}
took() { echo "$(($(date +%s) - step_started)) s"; }

# ---- what it needs -------------------------------------------------------------

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman); run it as root or in CI"

step "installing what it needs (podman, runc, debootstrap, docker-compose)"
missing=()
for pair in podman:podman runc:runc debootstrap:debootstrap docker-compose:docker-compose \
    netavark:/usr/lib/podman/netavark aardvark-dns:/usr/lib/podman/aardvark-dns \
    iptables:iptables ssh-keygen:ssh-keygen openssl:openssl curl:curl findmnt:findmnt catatonit:catatonit; do
    pkg=${pair%%:*}
    cmd=${pair#*:}
    [ "$pkg" = ssh-keygen ] && pkg=openssh-client
    [ "$pkg" = findmnt ] && pkg=util-linux
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "$cmd" ]; then missing+=("$pkg"); fi
done
# tools/kube_pod.py reads the Kubernetes manifests with PyYAML.
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
podman --version
docker-compose --version

curl -fsS -m 30 -o /dev/null "$DEBIAN_MIRROR/dists/$SUITE/Release" ||
    fail "Debian's mirror ($DEBIAN_MIRROR) is not reachable: the base image cannot be made here"
curl -fsS -m 30 -o /dev/null https://pypi.org/simple/pip/ ||
    fail "PyPI is not reachable: the image's dependencies cannot be installed here"

NETAVARK_CHAINS_BEFORE=$( (iptables -S; iptables -t nat -S) 2>/dev/null | grep -c NETAVARK || true)
IP_FORWARD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo 1)
# Rootful netavark keeps its IP allocations in a fixed place; blob info in another.
RUNTIME_LEFTOVERS=()
for dir in /run/containers/networks /var/lib/containers/cache; do
    [ -e "$dir" ] || RUNTIME_LEFTOVERS+=("$dir")
done
WORK=$(mktemp -d /var/tmp/sftp-ipi-container-test.XXXXXX)

# The images here are built on the stand-in's Python (3.11); the lock must also
# serve the real default base. Its wheels, by hash, for that Python and both
# common architectures:
real_base=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO/Dockerfile")
real_python=$(sed -E -n 's/^python:(3\.[0-9]+).*/\1/p' <<<"$real_base")
[ -n "$real_python" ] || fail "cannot tell the Python version of the default base $real_base"
step "checking that the locks install on $real_base (CPython $real_python; x86_64 and aarch64)"
for arch in x86_64 aarch64; do
    python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: --implementation cp \
        --python-version "$real_python" --platform "manylinux_2_28_$arch" --platform "manylinux2014_$arch" \
        --dest "$WORK/wheels-$arch" -r "$REPO/requirements.lock" -r "$REPO/requirements-build.lock" \
        >"$WORK/lock-check.log" 2>&1 || fail "the locks do not resolve to wheels for $real_base on $arch (see lock-check.log)"
done
rm -rf "$WORK"/wheels-*
say "every locked requirement has a hash-matching wheel for CPython $real_python on x86_64 and aarch64 ($(took))"
chmod 0755 "$WORK"
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
tmp_dir = "$WORK/libpod"

[network]
network_config_dir = "$WORK/networks"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
export CONTAINERS_CONF="$WORK/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/storage.conf"
export DOCKER_HOST="unix://$WORK/podman.sock"

# ---- images --------------------------------------------------------------------

step "making the base image $BASE_TAG with debootstrap"
rootfs="$WORK/rootfs"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    fail "debootstrap failed (see debootstrap.log)"
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $SUITE main
deb $DEBIAN_MIRROR $SUITE-updates main
EOF
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
# Where outgoing TLS is intercepted by a proxy, builds must trust its CA: the
# host's extra CA certificates go into the tree, for ca-certificates to pick up.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
tar --numeric-owner -C "$rootfs" -c . | podman import --quiet --change 'CMD ["bash"]' - "$BASE_TAG" >/dev/null
rm -rf "$rootfs"
say "base image made in $(took)"

step "building the stand-ins $PYTHON_TAG and $SFTP_TAG"
podman build --quiet --build-arg "BASE=$BASE_TAG" -t "$PYTHON_TAG" "$REPO/tests/containers/python" >"$WORK/build-standins.log" 2>&1 ||
    fail "building the python stand-in failed (see build-standins.log)"
podman build --quiet --build-arg "BASE=$BASE_TAG" -t "$SFTP_TAG" "$REPO/tests/containers/sftp" >>"$WORK/build-standins.log" 2>&1 ||
    fail "building the sftp stand-in failed (see build-standins.log)"
say "stand-ins built in $(took)"

# ---- the project, as an operator sets it up --------------------------------------

step "copying the work tree and setting it up as an operator would"
mkdir "$WORK/project"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
    tar -c --no-recursion --null --ignore-failed-read -T - -f -) | tar -x -C "$WORK/project" --no-same-owner
cd "$WORK/project"
cp .env.example .env
bash tools/compose_keys.sh

free_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SFTP_TEST_PORT=$free_port BASE_IMAGE=$PYTHON_TAG SFTP_TEST_IMAGE=$SFTP_TAG COMPOSE_PROJECT_NAME=sftpipitest
export COMPOSE_HTTP_TIMEOUT=300

podman system service --time=0 "$DOCKER_HOST" >"$WORK/podman-service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do
    [ -S "$WORK/podman.sock" ] && break
    sleep 0.1
done
[ -S "$WORK/podman.sock" ] || fail "the podman API service did not start"

step "docker-compose config and build (the image from the unchanged Dockerfile)"
docker-compose config -q
COMPOSE_UP=1
docker-compose build downloader >"$WORK/build-image.log" 2>&1 || fail "docker-compose build failed (see build-image.log)"
say "image built in $(took)"

compose_run() {
    # docker-compose run --rm downloader, with its exit code and output kept.
    local out=$1
    shift
    set +e
    timeout 600 docker-compose run --rm "$@" downloader >"$out" 2>&1
    local code=$?
    set -e
    grep -h "run finished" "$out" | tail -n 1 | sed 's/^.*| /    job: /'
    return $code
}

expect_code() {
    local want=$1 got=$2 out=$3
    if [ "$got" -ne "$want" ]; then
        cat "$out"
        fail "expected exit $want, got $got"
    fi
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

check_published() {
    local name
    for name in "$@"; do
        [ -f "volumes/server/$name" ] || fail "volumes/server/$name is missing"
        [ "$(sha "volumes/server/$name")" = "$(sha "volumes/remote/$name")" ] ||
            fail "volumes/server/$name differs from the server's file"
    done
}

mapfile -t samples < <(cd volumes/remote && ls -1 ./*.IPI | sed 's|^\./||' | sort)
[ "${#samples[@]}" -ge 2 ] || fail "make compose-keys made no sample files"

step "first pull: docker-compose run --rm downloader (starts sftp; strict host key)"
code=0
compose_run "$WORK/run1.log" || code=$?
expect_code 0 "$code" "$WORK/run1.log"
check_published "${samples[0]}"
grep -q "run finished: exit 0" "$WORK/run1.log" || fail "no run summary in the output"
say "pulled ${samples[0]} (SELECT_MODE=next: one file per run) in $(took); SHA-256 matches"

step "the rest in one run: SELECT_MODE=all"
code=0
compose_run "$WORK/run2.log" -e SELECT_MODE=all || code=$?
expect_code 0 "$code" "$WORK/run2.log"
check_published "${samples[@]}"
[ "$(cat volumes/state/last_file.txt)" = "${samples[-1]}" ] || fail "LAST_FILE_RECORD does not name ${samples[-1]}"
say "pulled ${samples[*]:1} in $(took); every SHA-256 matches"

step "again, while the server is down for its first seconds: retries, then nothing due"
docker-compose stop sftp >>"$WORK/compose.log" 2>&1
code=0
compose_run "$WORK/run3.log" --no-deps &
run3=$!
sleep 4
docker-compose start sftp >>"$WORK/compose.log" 2>&1
wait "$run3" || code=$?
expect_code 0 "$code" "$WORK/run3.log"
grep -q "fetched 0 file(s)" "$WORK/run3.log" || { cat "$WORK/run3.log"; fail "the third run fetched something"; }
grep -Eq "; [1-9][0-9]* retr" "$WORK/run3.log" || { cat "$WORK/run3.log"; fail "the run did not retry"; }
say "rode out the missing server, nothing due, exit 0, in $(took)"

step "an unknown host key is refused (empty known_hosts, strict policy)"
code=0
compose_run "$WORK/run-hostkey.log" -e SFTP_KNOWN_HOSTS=/home/sftp-ipi/.ssh/known_hosts || code=$?
expect_code 3 "$code" "$WORK/run-hostkey.log"
grep -q "SHA256:" "$WORK/run-hostkey.log" || fail "the refusal does not name the offered key's fingerprint"
say "exit 3 with the offered fingerprint, in $(took)"

step "the Kubernetes CronJob's pod with podman kube play (ConfigMap, Secret, claims, security context)"
# The manifests as `kubectl apply -k deploy/kubernetes` would create them, with
# the test server's credentials where secrets/README.md puts them; without
# kubectl, the base's files and the same Secret (tools/kube_pod.py).
kube="$WORK/kube"
mkdir -p "$kube"
cp volumes/secrets/sftp_password deploy/kubernetes/secrets/sftp_credential
cp volumes/sftp-host-keys/known_hosts deploy/kubernetes/secrets/known_hosts
if command -v kubectl >/dev/null; then
    kubectl kustomize deploy/kubernetes >"$kube/built.yaml" 2>"$kube/kustomize.log" || fail "kubectl kustomize failed (see kube/kustomize.log)"
    source_args=(--from "$kube/built.yaml")
    built_by="kubectl kustomize"
else
    source_args=(--secret sftp_credential=deploy/kubernetes/secrets/sftp_credential
        --secret known_hosts=deploy/kubernetes/secrets/known_hosts)
    built_by="the base's files (no kubectl)"
fi
# Only the server differs from the shipped ConfigMap: this one, and a password
# login (the one line the ConfigMap's comment says to change for it).
# The image under the name podman stored it by (the Docker API makes it docker.io/library/...):
# with imagePullPolicy: IfNotPresent, as shipped, it is used and never pulled.
kube_image=$(podman image inspect --format '{{index .RepoTags 0}}' "$IMAGE")
python3 tools/kube_pod.py --image "$kube_image" "${source_args[@]}" --podman-secrets "$kube/secrets" \
    --set SFTP_HOST=sftp --set SFTP_DIR=/upload \
    --unset SFTP_KEY_FILE --set SFTP_PASS_FILE=/run/secrets/sftp-ipi/sftp_credential >"$kube/pod.yaml"
for secret in "$kube/secrets"/*.yaml; do
    podman secret create "$(basename "$secret" .yaml)" "$secret" >/dev/null
done
# On the Compose project's network, where the server answers as "sftp".
podman kube play --network "${COMPOSE_PROJECT_NAME}_default" "$kube/pod.yaml" >"$WORK/kube-play.log" 2>&1 ||
    fail "podman kube play failed (see kube-play.log)"
kube_container=sftp-ipi-sftp-ipi # <pod>-<container>
kube_code=$(timeout 300 podman wait "$kube_container") || fail "the pod's container did not finish"
podman logs "$kube_container" >"$WORK/run-kube.log" 2>&1 || true
expect_code 0 "$kube_code" "$WORK/run-kube.log"
server_volume=$(podman volume inspect --format '{{.Mountpoint}}' sftp-ipi-server)
state_volume=$(podman volume inspect --format '{{.Mountpoint}}' sftp-ipi-state)
# SELECT_MODE=next, as shipped: one file a run, the first.
[ -f "$server_volume/${samples[0]}" ] || { cat "$WORK/run-kube.log"; fail "the pod delivered no ${samples[0]} to the sftp-ipi-server claim"; }
[ "$(sha "$server_volume/${samples[0]}")" = "$(sha "volumes/remote/${samples[0]}")" ] ||
    fail "the pod's ${samples[0]} differs from the server's"
[ "$(stat -c %s "$server_volume/${samples[0]}")" = "$(stat -c %s "volumes/remote/${samples[0]}")" ] ||
    fail "the pod delivered a different number of bytes"
[ "$(ls "$server_volume" | wc -l)" = 1 ] || fail "the pod delivered more than one file: $(ls "$server_volume")"
[ "$(cat "$state_volume/last_file.txt")" = "${samples[0]}" ] || fail "the pod's record does not name ${samples[0]}"
# The pod's security context, as podman applied it.
kube_security=$(podman inspect --format '{{.Config.User}} ro={{.HostConfig.ReadonlyRootfs}} caps={{.EffectiveCaps}} {{.HostConfig.SecurityOpt}} mem={{.HostConfig.Memory}}' "$kube_container")
case "$kube_security" in
"10001:10001 ro=true caps=[] "*no-new-privileges*" mem=268435456") ;;
*) fail "the pod's container is not as locked down as its manifest: $kube_security" ;;
esac
podman kube down "$kube/pod.yaml" >>"$WORK/kube-play.log" 2>&1 || true
say "the CronJob's pod (from $built_by) delivered ${samples[0]}, $(stat -c %s "volumes/remote/${samples[0]}") bytes, SHA-256 matches; exit 0; $kube_security ($(took))"

step "a ${BIG_MIB} MiB pull stopped by a container stop, then resumed"
head -c "$((BIG_MIB * 1024 * 1024))" /dev/urandom >"volumes/remote/$BIG_NAME"
chmod 0644 "volumes/remote/$BIG_NAME"
touch -d '2 hours ago' "volumes/remote/$BIG_NAME"
big_sha=$(sha "volumes/remote/$BIG_NAME")
container=sftpipitest_downloader_big
docker-compose run -d --name "$container" downloader >>"$WORK/compose.log" 2>&1
part="volumes/local/$BIG_NAME.part"
for _ in $(seq 600); do
    size=$(stat -c %s "$part" 2>/dev/null || echo 0)
    [ "$size" -ge $((STOP_AFTER_MIB * 1024 * 1024)) ] && break
    sleep 0.1
done
[ "$size" -ge $((STOP_AFTER_MIB * 1024 * 1024)) ] || fail "the large download did not start"
pid1=$(podman exec "$container" cat /proc/1/cmdline | tr '\0' ' ')
uid=$(podman exec "$container" id -u)
[ "$pid1" = "python -m app " ] || fail "PID 1 is '$pid1', not the job"
[ "$uid" = 10001 ] || fail "the job runs as UID $uid, not 10001"
if podman exec "$container" touch /opt/venv/written 2>/dev/null; then fail "the root file system is writable"; fi
stop_started=$(date +%s.%N)
podman stop --time 30 "$container" >/dev/null
stop_seconds=$(python3 -c "import time; print(f'{time.time() - $stop_started:.1f}')")
stopped_code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
podman logs "$container" >"$WORK/run-big-stopped.log" 2>&1 || true
podman rm "$container" >/dev/null
[ "$stopped_code" = 143 ] || {
    cat "$WORK/run-big-stopped.log"
    fail "the stopped job exited $stopped_code, not 143"
}
kept=$(stat -c %s "$part" 2>/dev/null || echo 0)
[ "$kept" -gt 0 ] || fail "no partial download was kept"
[ ! -e "volumes/server/$BIG_NAME" ] || fail "a stopped download was published"
say "PID 1 is the job (UID 10001, read-only root); stopped in ${stop_seconds} s with exit 143, $((kept / 1048576)) MiB kept"

code=0
compose_run "$WORK/run-big-resumed.log" || code=$?
expect_code 0 "$code" "$WORK/run-big-resumed.log"
grep -q "resuming at byte" "$WORK/run-big-resumed.log" || fail "the next run did not resume"
[ "$(sha "volumes/server/$BIG_NAME")" = "$big_sha" ] || fail "the resumed file differs from the server's"
transferred=$(tail -n 1 volumes/state/completed_files.jsonl | python3 -c 'import json, sys; print(json.load(sys.stdin)["bytes_transferred"])')
total=$((BIG_MIB * 1024 * 1024))
[ "$transferred" -le $((total - kept + 2 * 1024 * 1024)) ] ||
    fail "the resumed run transferred $transferred bytes; expected about $((total - kept))"
say "resumed at byte $kept and transferred $transferred of $total bytes; SHA-256 matches ($(took))"

# ---- report ----------------------------------------------------------------------

image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_bytes=$(podman image inspect --format '{{.Size}}' "$PYTHON_TAG")
say "image $IMAGE: $((image_bytes / 1000000)) MB on the stand-in base ($((base_bytes / 1000000)) MB); the project adds $(((image_bytes - base_bytes) / 1000000)) MB"
