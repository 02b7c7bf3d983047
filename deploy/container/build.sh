#!/usr/bin/env bash
# Build the CareCast image with podman (no Docker engine needed), as `make container` and the container
# integration test do.
#
#   deploy/container/build.sh [TAG]       (default localhost/carecast:$VERSION)
#
# BASE_IMAGE (environment) picks the base: the default is a local Debian bookworm image made with
# debootstrap (deploy/container/make-base-image.sh), for machines that cannot pull from a registry;
# BASE_IMAGE=python:3.11-slim where the registry is reachable. Missing tools (podman, buildah,
# debootstrap) are installed with apt-get. When the host sets PIP_CERT (a TLS-inspecting proxy), that CA
# bundle is mounted for the build steps only; it never reaches the image.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)"
TAG="${1:-localhost/carecast:$VERSION}"
LOCAL_BASE="localhost/carecast-base:bookworm"
BASE_IMAGE="${BASE_IMAGE:-$LOCAL_BASE}"

missing=()
for tool in podman buildah debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}"
fi

pull_args=()
if [[ "$BASE_IMAGE" == "$LOCAL_BASE" ]]; then
    "$ROOT/deploy/container/make-base-image.sh" "$LOCAL_BASE"
    pull_args=(--pull=never)  # a local image: never ask a registry for it
fi

ca_args=()
if [[ -n "${PIP_CERT:-}" && -f "${PIP_CERT}" ]]; then
    ca_args=(--volume "${PIP_CERT}:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi

# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
podman build --isolation=chroot --format docker "${pull_args[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" "${ca_args[@]}" \
    --tag "$TAG" "$ROOT"
echo "built $TAG from $BASE_IMAGE"
