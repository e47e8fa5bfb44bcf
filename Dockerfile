# ghit-work as a container entrypoint. The image holds ghit-work only (headless: no TUI); add
# ghit-cli and your agent CLIs in an image built FROM this one (docs/container.md).
#
# Build it from the top of the repository (docs/container.md, "Build it"):
# - where Docker Hub can be reached:  docker build -t ghit-work .
#   (pin the base by digest: --build-arg BASE=python:3.12-slim-bookworm@sha256:DIGEST)
# - where it cannot (these machines): as root, with docker.io and debootstrap installed and a
#   dockerd running, a stand-in base from Debian's packages first, then the image on it:
#     sh docker/make-base.sh
#     docker build --build-arg BASE=ghit-work-base:bookworm \
#         --build-arg BUILD_BASE=ghit-work-base:bookworm-build -t ghit-work .
# BASE is what the image ships on: Python 3.11+ on Debian bookworm. BUILD_BASE (default: BASE)
# is the build stage's only: the stand-in's -build tag adds the host's extra CA certificates so
# that pip there trusts what the host trusts, and none of them reaches the image.
ARG BASE=python:3.12-slim-bookworm
ARG BUILD_BASE=${BASE}

FROM ${BUILD_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Three RUN steps, each after the COPY of what it needs, so that an edit rebuilds from its own
# step on: the build tools (a virtualenv of their own, with pip); ghit-work's pinned
# dependencies (into /opt/ghit-work, created --without-pip: the build tools' pip installs into
# it, so neither pip nor setuptools is shipped); ghit-work's wheel. A source edit rebuilds
# only the last, without the network.
COPY docker/build-requirements.txt /tmp/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-deps -r /tmp/build-requirements.txt
COPY docker/requirements.txt /tmp/
RUN python3 -m venv --without-pip /opt/ghit-work \
    && /opt/build/bin/pip --python /opt/ghit-work/bin/python install --no-deps \
       -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY ghitwork /src/ghitwork
WORKDIR /src
RUN /opt/build/bin/python -m hatchling build --target wheel \
    && /opt/build/bin/pip --python /opt/ghit-work/bin/python install --no-deps --no-index \
       dist/ghit_work-*.whl

FROM ${BASE}
LABEL org.opencontainers.image.title="ghit-work" \
      org.opencontainers.image.description="Event-driven orchestrator that wakes coding agents up for ghit events" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.documentation="docs/container.md"
# One user and group, 10001:10001. Its directories also belong to group 0 and are group
# writable, so platforms that run the image under an arbitrary UID in group 0 can use them.
# HOME (where agent CLIs keep ~/.codex, ~/.claude) is not the state volume.
RUN groupadd --gid 10001 ghit-work \
    && useradd --uid 10001 --gid 10001 --home-dir /home/ghit-work --create-home \
       --shell /usr/sbin/nologin ghit-work \
    && mkdir -p /etc/ghit-work /var/lib/ghit-work \
    && chown 10001:0 /etc/ghit-work /var/lib/ghit-work /home/ghit-work \
    && chmod 0775 /etc/ghit-work /var/lib/ghit-work /home/ghit-work
COPY --from=build /opt/ghit-work /opt/ghit-work
ENV PATH=/opt/ghit-work/bin:$PATH \
    HOME=/home/ghit-work \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GHIT_WORK_INIT_STATE_DIR=/var/lib/ghit-work/state
USER 10001:10001
WORKDIR /var/lib/ghit-work
# Set state_dir = "/var/lib/ghit-work/state" in the config: it survives container restarts.
# `ghit-work init` writes exactly that here (GHIT_WORK_INIT_STATE_DIR above).
VOLUME ["/var/lib/ghit-work"]
# Healthy while a ghit-work runs on the config's state_dir (`ghit-work status` reads the
# snapshot it keeps there). With `http` set, /healthz answers the same question over HTTP.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s \
    CMD ["ghit-work", "-c", "/etc/ghit-work/ghit-work.toml", "status"]
# As PID 1, ghit-work forwards signals to itself and reaps orphaned agent processes; it
# holds SIGTERM from its first instant, so a stop during start-up is still a clean one.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ghit-work", "-c", "/etc/ghit-work/ghit-work.toml"]
