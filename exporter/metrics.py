"""The metrics: a prometheus-client Collector that renders one immutable Snapshot.

No global registry: callers register a SnapshotCollector in a CollectorRegistry of their own.
The families are plain data (`families`): the Collector hands them to prometheus-client, while `render`,
which the exporter calls once per refresh, writes the text format directly (a scrape only copies bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from passthrough_exporter import __version__
from passthrough_exporter.exposition import render_families
from passthrough_exporter.isolation import WEAKENED_REASONS, group_layout_id, group_status, weakened
from passthrough_exporter.model import PASSABLE_TYPES
from passthrough_exporter.snapshot import Snapshot

# Initialised to 0 so that rate() and alerts see a series before the first error.
ERROR_KINDS = (
    "vanished", "unreadable", "symlink_loop", "bad_attribute", "read_error",
    "missing_parent", "parent_cycle", "duplicate", "plugin_error", "source_error", "refresh_error",
    "bad_xml", "hostdev_unmatched", "hostdev_ambiguous",  # the libvirt source's
)


@dataclass(frozen=True, slots=True)
class MetricOptions:
    """Which devices get per-device series: a host of N such devices costs about 3N series."""

    device_types: tuple[str, ...] = PASSABLE_TYPES
    include_vfs: bool = True


def _label(value: object) -> str:
    return "" if value is None else str(value)


@dataclass(slots=True)
class Family:
    """One metric family as plain data: rendered by `render` directly, or by prometheus-client."""

    name: str  # without the "_total" of a counter, as prometheus-client spells it
    documentation: str
    type: str  # "gauge" | "counter"
    labels: tuple[str, ...]
    rows: list[tuple[tuple[str, ...], float]]  # label values (in `labels` order), value


def families(snap: Snapshot, opts: MetricOptions) -> list[Family]:
    """Every family of one snapshot, in exposition order."""
    inv = snap.inventory
    gauge = lambda name, doc, labels, rows: Family(name, doc, "gauge", labels, rows)  # noqa: E731

    info: list = []
    eligible: list = []
    affected: list = []
    assigned: list = []
    types = set(opts.device_types)
    verdicts, affected_sets = snap.verdicts, snap.affected
    for dev in inv:
        if dev.assigned_to:
            assigned.append(((dev.name, dev.assigned_to), 1))
        if dev.type not in types or (dev.physfn is not None and not opts.include_vfs):
            continue
        name, typ = dev.name, dev.type
        info.append(((name, typ, _label(dev.parent), _label(dev.vendor_id), _label(dev.product_id),
                      _label(dev.pci_class), _label(dev.driver), _label(dev.iommu_group)), 1))
        eligible.append(((name, typ), 1 if verdicts[name].eligible else 0))
        affected.append(((name, typ), len(affected_sets[name])))
    out = [
        gauge("passthrough_device_info", "Host device, with its identity as labels.",
              ("device", "type", "parent", "vendor_id", "product_id", "class", "driver", "iommu_group"), info),
        gauge("passthrough_device_eligible", "1 when the device can be passed through to a VM.",
              ("device", "type"), eligible),
        gauge("passthrough_device_affected_devices",
              "Devices that leave the host with this one (IOMMU group, children, SR-IOV functions).",
              ("device", "type"), affected),
        gauge("passthrough_device_assigned", "1 for each device a VM (libvirt domain) holds.",
              ("device", "domain"), assigned),
    ]

    g_devices: list = []
    g_viable: list = []
    g_vfio: list = []
    g_host: list = []
    for number, st in group_status(inv).items():
        g = (str(number),)
        g_devices.append((g, len(st.devices)))
        g_viable.append((g, 1 if st.viable else 0))
        g_vfio.append((g, len(st.vfio)))
        g_host.append((g, len(st.host)))
    out += [
        gauge("passthrough_iommu_group_devices", "PCI functions in the IOMMU group.", ("group",), g_devices),
        gauge("passthrough_iommu_group_viable",
              "1 when VFIO would accept the group: every endpoint driverless, on a vfio driver or pci-stub.",
              ("group",), g_viable),
        gauge("passthrough_iommu_group_vfio_devices", "Endpoints of the group bound to a vfio driver or pci-stub.",
              ("group",), g_vfio),
        gauge("passthrough_iommu_group_host_devices", "Endpoints of the group bound to any other (host) driver.",
              ("group",), g_host),
        gauge("passthrough_iommu_group_layout_hash",
              "Stable hash of which PCI functions share which IOMMU group; changes when devices are regrouped.",
              (), [((), group_layout_id(inv))]),
        gauge("passthrough_iommu_enabled", "1 when the kernel exposes IOMMU groups.", (),
              [((), 1 if inv.host.iommu_groups_present else 0)]),
    ]
    flags = weakened(inv.host)
    out.append(gauge("passthrough_isolation_weakened",
                     "1 when a kernel or module setting makes IOMMU isolation untrustworthy.", ("reason",),
                     [((reason,), 1 if flags[reason] else 0) for reason in WEAKENED_REASONS]))
    out.append(gauge("passthrough_finding", "1 for each safety finding a plugin reports.",
                     ("code", "severity", "subject"), [((f.code, f.severity, f.subject), 1) for f in snap.findings]))
    out.append(gauge("passthrough_source_up", "1 when the last refresh read the source.", ("source",),
                     [((snap.source,), 1 if snap.source_up else 0)]))
    out.append(gauge("passthrough_refresh_duration_seconds", "Time the last successful refresh took.", (),
                     [((), snap.duration)]))
    out.append(gauge("passthrough_last_refresh_timestamp_seconds", "Unix time the last successful refresh finished.",
                     (), [((), snap.finished_at)]))
    out.append(Family("passthrough_collect_errors", "Bad inputs skipped while reading and judging.", "counter",
                      ("kind",), [((kind,), snap.errors_total.get(kind, 0))
                                  for kind in sorted(set(ERROR_KINDS) | set(snap.errors_total))]))
    out.append(gauge("passthrough_exporter_build_info", "The exporter's version.", ("version",),
                     [((__version__,), 1)]))
    return out


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], options: MetricOptions | None = None) -> None:
        self._snapshot = snapshot
        self.options = options or MetricOptions()

    def describe(self) -> list[Metric]:
        return []  # unknown until collect(): keeps registration free of a source read

    def collect(self) -> Iterator[Metric]:
        for fam in families(self._snapshot(), self.options):  # one snapshot for every family
            cls = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
            if fam.labels:
                metric = cls(fam.name, fam.documentation, labels=list(fam.labels))
                for values, value in fam.rows:
                    metric.add_metric(list(values), value)
            else:
                metric = cls(fam.name, fam.documentation, value=fam.rows[0][1])
            yield metric


def render(snapshot: Snapshot, options: MetricOptions | None = None) -> bytes:
    """The text exposition of one snapshot: byte for byte what prometheus-client's generate_latest
    writes for SnapshotCollector, without building a Sample per series (5x faster on big hosts)."""
    return render_families(families(snapshot, options or MetricOptions()))
