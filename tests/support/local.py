"""The exporter inside the test's own process: one plugin manager for the run, a tree judged, a
Refresher whose worker is in this process, the real server on 127.0.0.1, and a tree served and
scraped over HTTP."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from passthrough_exporter.judging.inspector import Inspector
from passthrough_exporter.judging.snapshot import Snapshot
from passthrough_exporter.reading.sources import Source
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.rendering.metrics import MetricOptions
from passthrough_exporter.serving.refresher import Published, Refresher
from passthrough_exporter.serving.server import ExporterServer
from passthrough_exporter.serving.webconfig import WebConfig

from .client import request
from .parse import collect_errors, strict_json
from .sysfs_builder import SysfsTree

_INSPECTOR: Inspector | None = None


def inspector() -> Inspector:
    """One plugin manager for the whole run: loading entry points is the slow part of an Inspector."""
    global _INSPECTOR
    if _INSPECTOR is None:
        _INSPECTOR = Inspector()
    return _INSPECTOR


def judge_tree(tree: SysfsTree) -> Snapshot:
    return Inspector().judge(SysfsSource(str(tree.sys), str(tree.proc)).read())


class _Running:
    def poll(self) -> None:
        return None


class LocalWorker:
    """The refresh worker's work (refresh_worker.Builder) in the test's own process, behind the same
    Refresher `serve` runs: for sources and plugins made in Python (a gate, a fault, a bad device)."""

    def __init__(self, source: Source, inspector: Inspector, options: MetricOptions | None = None) -> None:
        from passthrough_exporter.commands.refresh_worker import Builder
        from passthrough_exporter.rendering.metrics import ERROR_KINDS

        self.builder = Builder(source, inspector, options or MetricOptions())
        self.source = source.name
        self.error_kinds = ERROR_KINDS
        self.proc = _Running()

    def ready(self, timeout: float) -> None:
        pass

    def exchange(self, timeout: float, held: int) -> tuple:
        return self.builder.answer(held)

    def interrupt(self) -> None:
        pass

    def end(self, grace: float = 0) -> None:
        pass


def local_refresher(source: Source, inspector: Inspector, interval: float = 3600.0,
                    options: MetricOptions | None = None) -> Refresher:
    """A Refresher whose worker is a LocalWorker of `source` and `inspector`, started."""
    refresher = Refresher([], interval, worker=lambda argv: LocalWorker(source, inspector, options))
    refresher.start_worker()
    return refresher


def exposition(published: Published) -> bytes:
    """The /metrics text of a published refresh, without the server's process metrics."""
    return b"".join(bytes(part) for part in published.metrics(b"", gzip=False))


def serve_quick(refresher: Refresher, web: WebConfig | None = None, **kw: Any) -> ExporterServer:
    """The real server on 127.0.0.1 in a thread of this process; `kw` as ExporterServer takes them."""
    httpd = ExporterServer(("127.0.0.1", 0), refresher, web or WebConfig(), **kw)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.wait_started()
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


def scrape_tree(tree: SysfsTree) -> Scrape:
    """One refresh of `tree` through the real server, then /metrics and /api/devices over HTTP."""
    with served(tree) as httpd:
        metrics = request(httpd, "/metrics")
        devices = request(httpd, "/api/devices")
    return Scrape(metrics.status, metrics.body.decode(), devices.status, strict_json(devices.body))
