"""Helpers shared by the reliability tests: serve a tree on 127.0.0.1 and read back what a scraper sees."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sysfs_builder import SysfsTree

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.serving.refresher import Refresher
from serving import local_refresher
from passthrough_exporter.serving.server import ExporterServer
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.serving.webconfig import WebConfig

_INSPECTOR: Inspector | None = None


def inspector() -> Inspector:
    """One plugin manager for the whole run: loading entry points is the slow part of an Inspector."""
    global _INSPECTOR
    if _INSPECTOR is None:
        _INSPECTOR = Inspector()
    return _INSPECTOR


def request(httpd: ExporterServer, path: str, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def collect_errors(exposition: str) -> dict[str, float]:
    """passthrough_collect_errors_total by kind, parsed the way Prometheus parses it."""
    for family in text_string_to_metric_families(exposition):
        if family.name == "passthrough_collect_errors":
            return {s.labels["kind"]: s.value for s in family.samples if s.name.endswith("_total")}
    raise AssertionError("no passthrough_collect_errors_total in the exposition")


@dataclass
class Scrape:
    metrics_status: int
    metrics: str
    devices_status: int
    devices: list[dict[str, Any]]

    @property
    def errors(self) -> dict[str, float]:
        """Only the kinds that were counted."""
        return {k: v for k, v in collect_errors(self.metrics).items() if v}

    @property
    def names(self) -> list[str]:
        return [d["name"] for d in self.devices]


def serve_quick(refresher: Refresher, web: WebConfig | None = None) -> ExporterServer:
    """The real server on 127.0.0.1, polling for shutdown every 20 ms (the default 0.5 s adds up)."""
    httpd = ExporterServer(("127.0.0.1", 0), refresher, web or WebConfig())
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


@contextlib.contextmanager
def served(tree: SysfsTree) -> Iterator[ExporterServer]:
    """The real server on 127.0.0.1 serving one refresh of `tree`, shut down afterwards."""
    refresher = local_refresher(SysfsSource(str(tree.sys), str(tree.proc)), inspector(), interval=3600)
    refresher.refresh()
    httpd = serve_quick(refresher)
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def scrape_tree(tree: SysfsTree) -> Scrape:
    """One refresh of `tree` through the real server, then /metrics and /api/devices over HTTP."""
    with served(tree) as httpd:
        m_status, metrics = request(httpd, "/metrics")
        d_status, devices = request(httpd, "/api/devices")
    return Scrape(m_status, metrics.decode(), d_status, strict_json(devices))


def strict_json(text: str | bytes) -> Any:
    """JSON as a strict parser reads it: NaN and the infinities are no JSON, and fail here."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
