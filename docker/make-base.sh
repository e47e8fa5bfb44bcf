#!/bin/sh
# docker/make-base.sh [TAG]: build a stand-in for the base image from Debian's packages, for
# machines that reach Debian's mirror but not Docker Hub. Debian bookworm (minbase) with its
# python3 (3.11), venv and CA certificates, imported as TAG (default ghit-work-base:bookworm).
# The host's extra CA certificates (a TLS-inspecting proxy, say) are copied in, so that pip in
# `docker build` trusts what the host trusts. Needs root, debootstrap and a Docker daemon.
set -eu
tag=${1:-ghit-work-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/*
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$tag" >/dev/null
echo "$tag"
