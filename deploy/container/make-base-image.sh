#!/usr/bin/env bash
# Make a local Debian bookworm base image with Python 3.11 and venv, for machines that cannot pull
# python:3.11-slim from a registry (the Dockerfile's BASE_IMAGE build argument then names this image).
#
#   deploy/container/make-base-image.sh [IMAGE]        (default localhost/carecast-base:bookworm)
#
# Needs root, debootstrap and podman. Does nothing when IMAGE already exists. Debian's python3 on
# bookworm is 3.11, the version requirements/main.lock was resolved for.
set -euo pipefail

IMAGE="${1:-localhost/carecast-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$IMAGE"; then
    echo "base image $IMAGE already exists"
    exit 0
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/carecast-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR"
# An image needs no package lists or caches; they only make it larger.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$IMAGE"
echo "made base image $IMAGE"
