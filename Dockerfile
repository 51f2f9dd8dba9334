# syntax=docker/dockerfile:1
# passthrough-exporter image: the sysfs source, run unprivileged against the host's /sys mounted
# read-only at /host/sys.
#
#   docker build -t passthrough-exporter .                     # or: podman build --format docker ...
#     [--build-arg REVISION=$(git rev-parse HEAD)]             # the commit, for --version and build_info
#   docker run -d --name passthrough-exporter -p 9839:9839 \
#     -v /sys:/host/sys:ro --read-only --cap-drop ALL --security-opt no-new-privileges \
#     passthrough-exporter
#
# BASE is any Debian-based image: a plain Debian root gets Debian's python3 from apt, an image
# that already has python3 (python:3.11-slim) uses its own. Both stages use the same BASE, so the
# venv's interpreter path is the same in both. deploy/container/build-local builds and runs the
# image on a Debian root made with mmdebstrap.
#
# The host's /proc is expected at /host/proc (mounted read-only): PID 1's mount table there says
# which disk holds the host's root filesystem; the container's own /proc would only show its
# overlay root, and the root disk's controller would look free to pass through.

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# Only set when the build is given one (--build-arg PIP_INDEX_URL=...); pip reads it from the environment.
ARG PIP_INDEX_URL
# The commit built (.git stays out of the build context): recorded beside the package by setup.py.
ARG REVISION=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
    fi
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY exporter/ exporter/
COPY plugins/ plugins/
# Every dependency is a pure-Python or manylinux wheel (lxml, bcrypt, pyyaml): nothing compiles, so
# neither stage has a compiler. The runtime needs no pip: it leaves with this stage.
# Behind a TLS-inspecting proxy, hand pip the CA bundle as a build secret (--secret id=pip-cert,src=FILE);
# it is mounted for this step only and never stored in the image.
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
 && python3 -m venv /opt/passthrough-exporter \
 && PASSTHROUGH_EXPORTER_REVISION="$REVISION" /opt/passthrough-exporter/bin/pip install --only-binary lxml,bcrypt,pyyaml . \
 && /opt/passthrough-exporter/bin/pip uninstall -y pip setuptools \
 && /opt/passthrough-exporter/bin/passthrough-exporter --version

FROM ${BASE}
# pci.ids gives PCI vendor and device names; without it the exporter shows numbers only.
RUN pkgs=pci.ids \
 && if ! command -v python3 >/dev/null; then pkgs="$pkgs python3"; fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 exporter \
 && useradd --system --no-log-init --uid 10001 --gid exporter --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin exporter \
 && mkdir -p /host/sys \
 && install -d -o 10001 -g 10001 -m 0755 /var/lib/passthrough-exporter
COPY --from=build /opt/passthrough-exporter /opt/passthrough-exporter
# No PYTHONUNBUFFERED: a buffered stdout keeps `devices --json` fast, and logs go to stderr, which
# Python flushes line by line anyway.
ENV PATH=/opt/passthrough-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
USER 10001:10001
EXPOSE 9839
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9839/healthz', timeout=4)"]
# This boot's and the previous boot's devices, for the upgrade-impact findings: mount a host directory
# here so the record outlives the container (the host's /sys is read at /host/sys, so the state file
# is named, not taken by default).
VOLUME ["/var/lib/passthrough-exporter"]
ENTRYPOINT ["passthrough-exporter"]
CMD ["serve", "--web.listen-address", ":9839", "--path.sysfs", "/host/sys", "--path.procfs", "/host/proc", \
     "--state.path", "/var/lib/passthrough-exporter/state.json"]
