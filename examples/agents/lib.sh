# Shared by examples/agents/*/build: build an agent CLI image from Debian's
# packages and the npm or PyPI registry, without any container registry.
#
# The image starts from the same debootstrap base as agentd's test image
# (localhost/agentd-test:bookworm, made by scripts/setup-podman: Debian 12
# minbase + git + bash + ca-certificates). A throw-away container of it runs
# the Debian/PyPI part of the install with the host's network; npm packages
# are installed by the host's npm straight into that container's root file
# system; then the container's file system is flattened into one layer with
# `podman export | podman import` and tagged localhost/agentd-<cli>:<version>.
#
# Idempotent: when the tag exists nothing happens (one `podman image exists`).
# Needs root (rootful Podman, `podman mount`). No intermediate folder is left
# behind; the throw-away container is removed even on failure.
#
# Environment:
#   AGENTD_AGENT_BASE_IMAGE  base image (default localhost/agentd-test:bookworm)
#   AGENTD_HOST_CA_BUNDLE    CA bundle handed to pip inside the build container
#                            (default /etc/ssl/certs/ca-certificates.crt, the
#                            bundle the host's own clients trust); it is mounted
#                            for the build only and is not part of the image.

set -euo pipefail

BASE_IMAGE="${AGENTD_AGENT_BASE_IMAGE:-localhost/agentd-test:bookworm}"
HOST_CA="${AGENTD_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
BUILD_CID=""
BUILD_MNT=""

log() { printf '%s: %s\n' "${AGENT_NAME:-build}" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "${AGENT_NAME:-build}" "$*" >&2; exit 1; }

build_cleanup() {
    if [[ -n "$BUILD_CID" ]]; then
        [[ -n "$BUILD_MNT" ]] && podman umount "$BUILD_CID" >/dev/null 2>&1
        podman rm --force "$BUILD_CID" >/dev/null 2>&1 || true
    fi
}

# image_exists IMAGE: 0 yes, 1 no; dies on a Podman error (exit 125).
image_exists() {
    local rc=0
    podman image exists "$1" || rc=$?
    ((rc == 0 || rc == 1)) || die "'podman image exists $1' failed (exit $rc); try 'podman info'"
    return "$rc"
}

# begin_build IMAGE SETUP: start from the base image, run SETUP (a /bin/sh
# script) in a throw-away container with the host's network, and mount its
# root file system at $BUILD_MNT for the host-side steps.
begin_build() {
    local image="$1" setup="$2"
    [[ "$(id -u)" -eq 0 ]] || die "building $image needs root (rootful Podman)"
    image_exists "$BASE_IMAGE" ||
        die "base image $BASE_IMAGE is missing: run scripts/setup-podman first"
    [[ -r "$HOST_CA" ]] || die "no CA bundle at $HOST_CA (set AGENTD_HOST_CA_BUNDLE)"
    trap build_cleanup EXIT
    BUILD_CID="$(podman create --network host --pull never \
        -v "$HOST_CA:/run/agentd-build/ca.crt:ro" \
        -e PIP_CERT=/run/agentd-build/ca.crt -e PIP_NO_CACHE_DIR=1 \
        -e PIP_DISABLE_PIP_VERSION_CHECK=1 -e DEBIAN_FRONTEND=noninteractive \
        "$BASE_IMAGE" /bin/sh -euc "$setup")"
    local out
    if ! out="$(podman start --attach "$BUILD_CID" 2>&1)"; then
        printf '%s\n' "$out" | tail -n 40 >&2
        die "the set-up script failed in the build container (output above)"
    fi
    BUILD_MNT="$(podman mount "$BUILD_CID")"
}

# npm_install SPEC...: install npm packages globally into the image's
# /usr/local with the host's npm (Node.js and npm are not needed in the image
# to install; see each build for whether they are needed to run).
npm_install() {
    command -v npm >/dev/null || die "npm is needed on the host to install $*"
    local out
    if ! out="$(npm install --global --prefix "$BUILD_MNT/usr/local" \
        --no-fund --no-audit --no-update-notifier --loglevel=error "$@" 2>&1)"; then
        printf '%s\n' "$out" | tail -n 40 >&2
        die "npm install $* failed (output above)"
    fi
}

# finish_build IMAGE CHANGE...: flatten the container into IMAGE, with the
# Dockerfile-style CHANGEs (ENV, CMD, ...).
finish_build() {
    local image="$1"
    shift
    local changes=() c
    for c in "$@"; do changes+=(--change "$c"); done
    rm -rf "$BUILD_MNT"/var/cache/apt/archives/*.deb "$BUILD_MNT"/var/lib/apt/lists/* \
        "$BUILD_MNT"/root/.npm "$BUILD_MNT"/root/.cache "$BUILD_MNT"/tmp/*
    podman umount "$BUILD_CID" >/dev/null
    BUILD_MNT=""
    podman export "$BUILD_CID" | podman import --quiet "${changes[@]}" - "$image" >/dev/null ||
        die "podman import of the build container as $image failed"
    podman rm --force "$BUILD_CID" >/dev/null
    BUILD_CID=""
}

# check_version IMAGE EXPECTED CMD...: the CLI runs in the image, offline, as
# an unprivileged user, and prints EXPECTED.
check_version() {
    local image="$1" expected="$2"
    shift 2
    local out
    out="$(podman run --rm --network none --user 1000:1000 --tmpfs /home/check:rw,mode=1777 \
        -e HOME=/home/check "$image" "$@" 2>&1)" ||
        die "'$*' fails in $image: $out"
    [[ "$out" == *"$expected"* ]] || die "'$*' in $image printed '$out', not $expected"
    log "ok: $image ($*: $out)"
}
