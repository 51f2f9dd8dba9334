# syntax=docker/dockerfile:1
# passthrough-exporter image: the sysfs source, run unprivileged against the host's /sys mounted
# read-only at /host/sys.
#
#   docker build -t passthrough-exporter .
#   docker run -d --name passthrough-exporter -p 9839:9839 \
#     -v /sys:/host/sys:ro --read-only --cap-drop ALL --security-opt no-new-privileges \
#     passthrough-exporter
#
# /proc needs no mount: /proc/cmdline is the host kernel's in every container.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
COPY plugins/ plugins/
# A non-editable install into a venv that the runtime stage copies whole.
RUN python -m venv /opt/passthrough-exporter \
 && /opt/passthrough-exporter/bin/pip install . \
 && /opt/passthrough-exporter/bin/passthrough-exporter --version

FROM python:3.11-slim
# pci.ids gives PCI vendor and device names; without it the exporter shows numbers only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pci.ids \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 exporter \
 && useradd --system --uid 10001 --gid exporter --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin exporter
COPY --from=build /opt/passthrough-exporter /opt/passthrough-exporter
ENV PATH=/opt/passthrough-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9839
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9839/healthz', timeout=4)"]
ENTRYPOINT ["passthrough-exporter"]
CMD ["serve", "--web.listen-address", ":9839", "--path.sysfs", "/host/sys", "--path.procfs", "/proc"]
