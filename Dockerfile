# ghit-work as a container entrypoint. Build: docker build -t ghit-work .
# The image holds ghit-work only; add ghit-cli and your agent CLIs in an image built FROM this
# one (see docs/container.md).
FROM python:3.12-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/ghit-work ghit-work \
    && mkdir -p /etc/ghit-work \
    && chown ghit-work /var/lib/ghit-work

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ghitwork ./ghitwork
RUN pip install --no-cache-dir . && rm -rf /src

USER 10001
WORKDIR /var/lib/ghit-work
# Set state_dir = "/var/lib/ghit-work/state" in the config: it survives container restarts.
VOLUME ["/var/lib/ghit-work"]
ENV PYTHONUNBUFFERED=1
# As PID 1, ghit-work forwards signals to itself and reaps orphaned agent processes.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ghit-work", "-c", "/etc/ghit-work/ghit-work.toml"]
