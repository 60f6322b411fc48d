# audience-purge as a container image, run unattended as a Kubernetes Job (deploy/kubernetes/).
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg SOURCE_URL=https://<your git host>/audience-purge -t audience-purge:0.1.0 .
#   docker run --rm --read-only -v "$PWD:/data" -e UNLEASHX_TOKEN audience-purge:0.1.0 \
#       run --input /data/ids.csv --campaign-id 42
#
# Everything installed comes from the hashed locks in requirements/ (docs/lock.md), so two
# builds a month apart hold the same code. tests/test_image.py lints this file (hadolint) and
# replays its build steps without a container engine.
#
# Base image: the Python minor release CI tests (3.11), pinned to a patch release. A digest
# of this tag as pinned in public Dockerfiles (not checked from here: the build machines
# reach no container registry; the tag is rebuilt for Debian updates, so digests change):
#   python:3.11.17-slim-bookworm@sha256:2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb
# Check it (`docker buildx imagetools inspect python:3.11.17-slim-bookworm`) and append it
# to both FROM lines to pin the exact bytes; refresh both together (docs/lock.md).
FROM python:3.11.17-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

# The build tool chain (pip, setuptools, wheel) from build.lock, then the runtime
# dependencies into the application's own virtual environment from runtime.lock: every file
# checked against the lock's hashes, wheels only (nothing is compiled in the image).
COPY requirements/build.lock requirements/runtime.lock requirements/
RUN python -m pip install --require-hashes --only-binary=:all: -r requirements/build.lock \
 && python -m venv --without-pip /opt/audience-purge \
 && python -m pip --python /opt/audience-purge/bin/python install \
        --require-hashes --only-binary=:all: -r requirements/runtime.lock

# The project's wheel, built with the locked build backend (no download), installed without
# dependencies (all of them are above), then checked for completeness.
COPY pyproject.toml README.md LICENSE ./
COPY worker ./worker
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m pip --python /opt/audience-purge/bin/python install --no-deps /wheels/*.whl \
 && python -m pip --python /opt/audience-purge/bin/python check


FROM python:3.11.17-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://example.invalid/audience-purge
LABEL org.opencontainers.image.title="audience-purge" \
      org.opencontainers.image.description="Bulk, rate-limited, audited deletion of UnleashX campaign audience records" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT"

# No .pyc written at run time (the install is compiled already, and the root filesystem may
# be read-only); logs leave the process at once.
ENV PATH=/opt/audience-purge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/audience-purge /opt/audience-purge

# A named user for the numeric id (ps, whoami); no home directory: nothing is written
# outside the working directory and the paths the flags name.
RUN groupadd --gid 10001 purge \
 && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin purge \
 && install -d -o 10001 -g 10001 -m 0700 /data

# /data: the input, audit logs, state and reports. With a read-only root filesystem, mount a
# volume here (and on /tmp); Kubernetes examples in deploy/kubernetes/.
WORKDIR /data
USER 10001:10001

# The CLI installs its own SIGTERM/SIGINT handlers from the process's first moment, so it
# behaves correctly as PID 1: SIGTERM gives in-flight requests --grace seconds, exit 75.
ENTRYPOINT ["audience-purge"]
CMD ["--help"]
