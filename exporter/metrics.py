"""The metrics: a prometheus-client Collector that renders one immutable Snapshot.

No global registry: callers register a SnapshotCollector in a CollectorRegistry of their own.
The exporter renders the exposition once per refresh (see `render`), so a scrape only copies bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from passthrough_exporter import __version__
from passthrough_exporter.isolation import WEAKENED_REASONS, group_layout_id, group_status, weakened
from passthrough_exporter.model import PASSABLE_TYPES
from passthrough_exporter.snapshot import Snapshot

# Initialised to 0 so that rate() and alerts see a series before the first error.
ERROR_KINDS = (
    "vanished", "unreadable", "symlink_loop", "bad_attribute", "read_error",
    "missing_parent", "parent_cycle", "duplicate", "plugin_error", "source_error",
)


@dataclass(frozen=True, slots=True)
class MetricOptions:
    """Which devices get per-device series: a host of N such devices costs about 3N series."""

    device_types: tuple[str, ...] = PASSABLE_TYPES
    include_vfs: bool = True


def _label(value: object) -> str:
    return "" if value is None else str(value)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], options: MetricOptions | None = None) -> None:
        self._snapshot = snapshot
        self.options = options or MetricOptions()

    def describe(self) -> list[Metric]:
        return []  # unknown until collect(): keeps registration free of a source read

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()  # one snapshot for every family of this collection
        inv = snap.inventory
        opts = self.options

        info = GaugeMetricFamily(
            "passthrough_device_info", "Host device, with its identity as labels.",
            labels=["device", "type", "parent", "vendor_id", "product_id", "class", "driver", "iommu_group"])
        eligible = GaugeMetricFamily(
            "passthrough_device_eligible", "1 when the device can be passed through to a VM.",
            labels=["device", "type"])
        affected = GaugeMetricFamily(
            "passthrough_device_affected_devices",
            "Devices that leave the host with this one (IOMMU group, children, SR-IOV functions).",
            labels=["device", "type"])
        assigned = GaugeMetricFamily(
            "passthrough_device_assigned", "1 for each device a VM (libvirt domain) holds.",
            labels=["device", "domain"])
        types = set(opts.device_types)
        for dev in inv:
            if dev.assigned_to:
                assigned.add_metric([dev.name, dev.assigned_to], 1)
            if dev.type not in types or (dev.physfn is not None and not opts.include_vfs):
                continue
            info.add_metric([dev.name, dev.type, _label(dev.parent), _label(dev.vendor_id), _label(dev.product_id),
                             _label(dev.pci_class), _label(dev.driver), _label(dev.iommu_group)], 1)
            eligible.add_metric([dev.name, dev.type], 1 if snap.verdicts[dev.name].eligible else 0)
            affected.add_metric([dev.name, dev.type], len(snap.affected[dev.name]))
        yield info
        yield eligible
        yield affected
        yield assigned

        g_devices = GaugeMetricFamily("passthrough_iommu_group_devices", "PCI functions in the IOMMU group.",
                                      labels=["group"])
        g_viable = GaugeMetricFamily(
            "passthrough_iommu_group_viable",
            "1 when VFIO would accept the group: every endpoint driverless, on a vfio driver or pci-stub.",
            labels=["group"])
        g_vfio = GaugeMetricFamily("passthrough_iommu_group_vfio_devices",
                                   "Endpoints of the group bound to a vfio driver or pci-stub.", labels=["group"])
        g_host = GaugeMetricFamily("passthrough_iommu_group_host_devices",
                                   "Endpoints of the group bound to any other (host) driver.", labels=["group"])
        for number, st in group_status(inv).items():
            g = [str(number)]
            g_devices.add_metric(g, len(st.devices))
            g_viable.add_metric(g, 1 if st.viable else 0)
            g_vfio.add_metric(g, len(st.vfio))
            g_host.add_metric(g, len(st.host))
        yield from (g_devices, g_viable, g_vfio, g_host)

        yield GaugeMetricFamily(
            "passthrough_iommu_group_layout_hash",
            "Stable hash of which PCI functions share which IOMMU group; changes when devices are regrouped.",
            value=group_layout_id(inv))
        yield GaugeMetricFamily("passthrough_iommu_enabled", "1 when the kernel exposes IOMMU groups.",
                                value=1 if inv.host.iommu_groups_present else 0)
        weak = GaugeMetricFamily("passthrough_isolation_weakened",
                                 "1 when a kernel or module setting makes IOMMU isolation untrustworthy.",
                                 labels=["reason"])
        flags = weakened(inv.host)
        for reason in WEAKENED_REASONS:
            weak.add_metric([reason], 1 if flags[reason] else 0)
        yield weak

        finding = GaugeMetricFamily("passthrough_finding", "1 for each safety finding a plugin reports.",
                                    labels=["code", "severity", "subject"])
        for f in snap.findings:
            finding.add_metric([f.code, f.severity, f.subject], 1)
        yield finding

        yield _labelled("passthrough_source_up", "1 when the last refresh read the source.",
                        {"source": snap.source}, 1 if snap.source_up else 0)
        yield GaugeMetricFamily("passthrough_refresh_duration_seconds", "Time the last successful refresh took.",
                                value=snap.duration)
        yield GaugeMetricFamily("passthrough_last_refresh_timestamp_seconds",
                                "Unix time the last successful refresh finished.", value=snap.finished_at)
        errors = CounterMetricFamily("passthrough_collect_errors", "Bad inputs skipped while reading and judging.",
                                     labels=["kind"])
        for kind in sorted(set(ERROR_KINDS) | set(snap.errors_total)):
            errors.add_metric([kind], snap.errors_total.get(kind, 0))
        yield errors
        yield _labelled("passthrough_exporter_build_info", "The exporter's version.", {"version": __version__}, 1)


def _labelled(name: str, documentation: str, labels: dict[str, str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def render(snapshot: Snapshot, options: MetricOptions | None = None) -> bytes:
    """The text exposition of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot, options))
    return generate_latest(registry)
