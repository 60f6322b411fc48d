# audience-purge as a container: runs unattended as a Kubernetes Job.
#   docker build -t audience-purge .
#   docker run --rm -e UNLEASHX_TOKEN -v "$PWD:/data" audience-purge run --input /data/ids.csv ...
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 purge
USER 10001
WORKDIR /data
# The CLI installs its own SIGTERM/SIGINT handlers, so it behaves correctly as PID 1.
ENTRYPOINT ["audience-purge"]
CMD ["--help"]
