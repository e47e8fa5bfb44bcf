#!/bin/sh
# docker/make-base.sh [TAG]: build a stand-in for the base image from Debian's packages, for
# machines that reach Debian's mirror but not Docker Hub. Needs root, debootstrap and a
# running Docker daemon; prints the two tags it made:
#   TAG        (default ghit-work-base:bookworm): Debian bookworm (minbase) with its python3
#              (3.11), venv and Debian's CA certificates. The shipped image is FROM it.
#   TAG-build  TAG plus the host's extra CA certificates (a TLS-inspecting proxy, say), so
#              that pip in the Dockerfile's build stage trusts what the host trusts. Only the
#              build stage is FROM it (--build-arg BUILD_BASE=TAG-build): the shipped image
#              holds none of the host's certificates. Without any, TAG-build is TAG.
# Then: docker build --build-arg BASE=TAG --build-arg BUILD_BASE=TAG-build -t ghit-work .
set -eu
tag=${1:-ghit-work-base:bookworm}
build_tag=$tag-build
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/*
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$tag" >/dev/null
rm -rf "$root" && mkdir "$root"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$root/"
    printf '%s\n' "FROM $tag" 'COPY *.crt /usr/local/share/ca-certificates/' \
        'RUN update-ca-certificates >/dev/null 2>&1' >"$root/Dockerfile"
    # Its output only if it fails (the legacy builder warns that it is deprecated).
    if ! out=$(docker build -q -t "$build_tag" "$root" 2>&1); then
        echo "$out" >&2
        exit 1
    fi
else
    docker tag "$tag" "$build_tag"
fi
echo "$tag"
echo "$build_tag"
