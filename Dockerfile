# CareCast API and scoring worker image.
#
#   podman build --format docker -t carecast:0.1.0 .                 (or docker build; `make container` here)
#   docker run -p 8000:8000 -e CARECAST_DATA_KEY=... -e CARECAST_DATABASE_URL=... carecast:0.1.0
#   docker run ... carecast:0.1.0 worker                             (the scoring worker)
#   docker run ... carecast:0.1.0 db upgrade                         (migrations, as a one-off job)
#
# BASE_IMAGE is any Debian-based image with Python 3.11 and its venv module: python:3.11-slim by default;
# on a machine that cannot pull it, deploy/container/make-base-image.sh makes one with debootstrap.
# Both stages use the same base, so the venv's interpreter path is the same in both.
# No secret is baked in: keys, database passwords and tokens come from the environment at run time.
ARG BASE_IMAGE=python:3.11-slim

# -- builder: the locked dependencies (hash-checked), then the project's wheel, into /opt/carecast -----------
FROM ${BASE_IMAGE} AS builder
ARG LOCK_FILE=requirements/main.lock
# Only for builders behind a TLS-inspecting proxy: a CA bundle mounted at build time (`make container` does
# this when the host sets PIP_CERT). A build argument, so it never reaches the runtime image.
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
RUN python3 -m venv /opt/carecast
COPY ${LOCK_FILE} /build/requirements.lock
RUN /opt/carecast/bin/pip install --require-hashes --no-deps -r /build/requirements.lock
COPY pyproject.toml README.md /build/
COPY src /build/src
# --no-deps: every dependency came from the lock above; `pip check` fails the build if one is missing.
RUN /opt/carecast/bin/pip wheel --no-deps --wheel-dir /build/wheels /build \
 && /opt/carecast/bin/pip install --no-deps /build/wheels/carecast-*.whl \
 && /opt/carecast/bin/pip check \
 && /opt/carecast/bin/python -m compileall -q /opt/carecast/lib

# -- runtime: the venv and a non-root user; nothing else from the build --------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG CARECAST_UID=10001
RUN groupadd --gid "${CARECAST_UID}" carecast \
 && useradd --no-log-init --no-create-home --uid "${CARECAST_UID}" --gid carecast \
        --home-dir /var/lib/carecast --shell /usr/sbin/nologin carecast \
 && install -d -o carecast -g carecast -m 0700 /var/lib/carecast
COPY --from=builder /opt/carecast /opt/carecast
ENV PATH=/opt/carecast/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    CARECAST_ENV=production \
    CARECAST_DATA_DIR=/var/lib/carecast
USER ${CARECAST_UID}:${CARECAST_UID}
WORKDIR /var/lib/carecast
EXPOSE 8000
# Liveness only: /readyz also needs a trained champion model, which a fresh deployment may not have yet.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
ENTRYPOINT ["carecast"]
# gunicorn (gthread) under `carecast serve`; SIGTERM stops it gracefully within 10 s.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
