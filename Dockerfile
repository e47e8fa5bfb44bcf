# ghit-work as a container entrypoint:  docker build -t ghit-work .
# The image holds ghit-work only (headless: no TUI); add ghit-cli and your agent CLIs in an
# image built FROM this one (docs/container.md).
#
# BASE: Python 3.11+ on Debian bookworm. Pin it by digest where you can pull it
# (--build-arg BASE=python:3.12-slim-bookworm@sha256:...); where Docker Hub cannot be reached,
# docker/make-base.sh builds a stand-in from Debian's packages (ghit-work-base:bookworm).
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS build
# Dependencies first, each list in its own layer: a source edit rebuilds from the COPY of
# the sources on, without the network.
COPY docker/build-requirements.txt docker/requirements.txt /tmp/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --no-deps -r /tmp/build-requirements.txt \
    && python3 -m venv /opt/ghit-work \
    && /opt/ghit-work/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY ghitwork /src/ghitwork
WORKDIR /src
RUN /opt/build/bin/python -m hatchling build --target wheel \
    && /opt/ghit-work/bin/pip install --no-cache-dir --no-deps --no-index dist/ghit_work-*.whl

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
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/ghit-work
# Set state_dir = "/var/lib/ghit-work/state" in the config: it survives container restarts.
VOLUME ["/var/lib/ghit-work"]
# Healthy while a ghit-work runs on the config's state_dir (`ghit-work status` reads the
# snapshot it keeps there). With `http` set, /healthz answers the same question over HTTP.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s \
    CMD ["ghit-work", "-c", "/etc/ghit-work/ghit-work.toml", "status"]
# As PID 1, ghit-work forwards signals to itself and reaps orphaned agent processes; it
# holds SIGTERM from its first instant, so a stop during start-up is still a clean one.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ghit-work", "-c", "/etc/ghit-work/ghit-work.toml"]
