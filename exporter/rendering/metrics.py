"""The metrics: every family of one immutable Snapshot, declared once at the top.

No global registry: callers register a SnapshotCollector in a CollectorRegistry of their own.
The families are plain data (`families`): the Collector hands them to prometheus-client, while
`render`, which the exporter calls once per refresh, writes the text format directly (a scrape only
copies bytes); tests check that both give the same bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from typing import TYPE_CHECKING

from ..judging.facts import WEAKENED_REASONS
from ..judging.live import NO_VGPU_TYPE
from ..judging.snapshot import Snapshot
from ..model import PASSABLE_TYPES, Device
from ..reading.sources import error_kinds
from ..textsafe import visible
from .exposition import DEFAULT_TELEMETRY_PATH, Family, Row, Spec, render_families
from .status import STATUS_METRICS, Status, status_families

# The core's own error kinds (the inventory's, the inspector's, the refresher's) and every source's.
# Initialised to 0 so that rate() and alerts see a series before the first error.
ERROR_KINDS = tuple(dict.fromkeys((
    "missing_parent", "parent_cycle", "duplicate", "plugin_error", "source_error", "refresh_error",
    *error_kinds(),
)))

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# Every metric, in exposition order: name (a counter without its "_total") -> type, help, labels.
METRICS: dict[str, Spec] = {
    "passthrough_device_info": Spec("gauge", "Host device, with its identity as labels.",
        ("device", "type", "parent", "vendor_id", "product_id", "class", "driver", "iommu_group", "numa_node",
         "pcie_root")),
    "passthrough_device_eligible": Spec("gauge", "1 when the device can be passed through to a VM.",
        ("device", "type")),
    "passthrough_device_affected_devices": Spec("gauge",
        "Devices that leave the host with this one (IOMMU group, children, SR-IOV functions).", ("device", "type")),
    "passthrough_device_assigned": Spec("gauge",
        "1 for each libvirt domain configured with the device; running says whether that domain runs.",
        ("device", "domain", "running")),
    "passthrough_device_in_use": Spec("gauge",
        "1 while a VM or another user-space driver has the device open; vm is empty when not known.",
        ("device", "type", "vm")),
    "passthrough_device_available": Spec("gauge",
        "1 when the device can be handed to a VM now: eligible, not in use, not assigned, nothing it takes "
        "along in use or assigned.", ("device", "type")),
    "passthrough_pool_devices": Spec("gauge",
        "Devices per model and NUMA node in each state: available, in_use, assigned, blocked or ineligible.",
        ("type", "vendor_id", "product_id", "product", "numa_node", "state")),
    "passthrough_pcie_link_speed_gts": Spec("gauge", "PCIe link speed in GT/s, as trained (current) and at most (max).",
        ("device", "kind")),
    "passthrough_pcie_link_width": Spec("gauge", "PCIe link width in lanes, as trained (current) and at most (max).",
        ("device", "kind")),
    "passthrough_pcie_aer_errors": Spec("counter", "PCIe errors the device reported since boot (AER), by severity.",
        ("device", "severity")),
    "passthrough_device_power_state": Spec("gauge", "1 for the device's current PCI power state.",
        ("device", "state")),
    "passthrough_sriov_vfs": Spec("gauge", "SR-IOV virtual functions of a physical function: total and enabled.",
        ("device", "kind")),
    "passthrough_mdev_available_instances": Spec("gauge",
        "Mediated devices (vGPUs) of this type that can still be created on the device.",
        ("device", "mdev_type", "name")),
    "passthrough_mdev_instances": Spec("gauge", "Mediated devices (vGPUs) of this type that exist on the device.",
        ("device", "mdev_type")),
    "passthrough_vgpu_available": Spec("gauge",
        "Virtual functions of this PF without a vGPU type, and blocked by nothing else, on which this "
        "vendor-specific vGPU type can be created now; one series per type any of its VFs lists or carries, "
        "0 included.",
        ("device", "vgpu_type", "name")),
    "passthrough_vgpu_instances": Spec("gauge",
        "Virtual functions of this PF carrying this vendor-specific vGPU type; one series per type any of "
        "its VFs lists or carries, 0 included.", ("device", "vgpu_type", "name")),
    "passthrough_iommu_group_devices": Spec("gauge", "PCI functions in the IOMMU group.", ("group",)),
    "passthrough_iommu_group_viable": Spec("gauge",
        "1 when VFIO would accept the group: every endpoint driverless, on a vfio driver or pci-stub.", ("group",)),
    "passthrough_iommu_group_vfio_devices": Spec("gauge",
        "Endpoints of the group bound to a vfio driver or pci-stub.", ("group",)),
    "passthrough_iommu_group_host_devices": Spec("gauge",
        "Endpoints of the group bound to any other (host) driver.", ("group",)),
    "passthrough_iommu_group_layout_hash": Spec("gauge",
        "Stable hash of which PCI functions share which IOMMU group; changes when devices are regrouped."),
    "passthrough_iommu_enabled": Spec("gauge", "1 when the kernel exposes IOMMU groups."),
    "passthrough_interrupt_remapping_enabled": Spec("gauge",
        "1 when the kernel remaps interrupts (an IR- interrupt chip); absent when it cannot be told."),
    "passthrough_vfio_cdev_enabled": Spec("gauge",
        "1 when the devices on a VFIO driver have VFIO cdev nodes (needed by iommufd users); 0 when one has "
        "none; absent when it cannot be told (no device on a VFIO driver, not a whole sysfs, or a node that "
        "cannot be read)."),
    "passthrough_iommufd_enabled": Spec("gauge",
        "1 when the iommufd device (/dev/iommu) exists; absent when it cannot be told."),
    "passthrough_isolation_weakened": Spec("gauge",
        "1 when a kernel or module setting makes IOMMU isolation untrustworthy.", ("reason",)),
    "passthrough_finding": Spec("gauge", "1 for each safety finding a plugin reports.",
        ("code", "severity", "subject")),
    **STATUS_METRICS,  # how the refresh went rather than what it found: the text's tail
}


@dataclass(frozen=True, slots=True)
class MetricOptions:
    """Which devices get per-device series: a host of N such devices costs about 3N series."""

    device_types: tuple[str, ...] = PASSABLE_TYPES
    include_vfs: bool = True
    include_health: bool = True  # link, AER, power state: 2-9 series per PCI endpoint
    telemetry_path: str = DEFAULT_TELEMETRY_PATH  # where `serve` serves them: the host page links it


def _label(value: object) -> str:
    return "" if value is None else str(value)


def _family(name: str, rows: list[Row]) -> Family:
    return Family.of(name, METRICS[name], rows)


def families(snap: Snapshot, opts: MetricOptions) -> list[Family]:
    """Every family of one snapshot, in the order of METRICS: the host's, then the status ones."""
    status = Status(snap.source, snap.source_up, snap.duration, snap.finished_at, errors_total(snap.errors_total))
    return host_families(snap, opts) + status_families(status)


def errors_total(counts: Mapping[str, int]) -> dict[str, int]:
    """`counts` with every kind there is, 0 where none was counted."""
    return {**dict.fromkeys(ERROR_KINDS, 0), **counts}


def host_families(snap: Snapshot, opts: MetricOptions) -> list[Family]:
    """The families of what the host is: all but the status ones."""
    inv, facts = snap.inventory, snap.facts
    rows: dict[str, list[Row]] = {name: [] for name in METRICS}
    info, eligible, affected = (rows["passthrough_device_info"], rows["passthrough_device_eligible"],
                                rows["passthrough_device_affected_devices"])
    assigned, in_use, available = (rows["passthrough_device_assigned"], rows["passthrough_device_in_use"],
                                   rows["passthrough_device_available"])
    types = set(opts.device_types)
    verdicts, affected_sets, holders, states = snap.verdicts, snap.affected, facts.in_use, snap.states
    for dev in inv:
        for domain, running in dev.assignments:
            assigned.append(((dev.name, domain, "true" if running else "false"), 1))
        if dev.type not in types or (dev.physfn is not None and not opts.include_vfs):
            continue
        name, typ = dev.name, dev.type
        info.append(((name, typ, _label(dev.parent), _label(dev.vendor_id), _label(dev.product_id),
                      _label(dev.pci_class), _label(dev.driver), _label(dev.iommu_group), _label(dev.numa_node),
                      _label(dev.pcie_root)), 1))
        eligible.append(((name, typ), 1 if verdicts[name].eligible else 0))
        affected.append(((name, typ), len(affected_sets[name])))
        if name in holders:
            holder = holders[name]
            in_use.append(((name, typ, _label(holder.vm if holder is not None else None)), 1))
        available.append(((name, typ), 1 if states.get(name) == "available" else 0))
        if typ == "pci":
            _pci_rows(dev, rows, opts.include_health)
    rows["passthrough_pool_devices"] += _pools(snap, types)
    if "pci" in types:  # capacity of a PF, even with --metrics.skip-vfs (as the pools count VFs)
        _vgpu_rows(snap, rows)

    for number, st in facts.groups.items():
        g = (str(number),)
        rows["passthrough_iommu_group_devices"].append((g, len(st.devices)))
        rows["passthrough_iommu_group_viable"].append((g, 1 if st.viable else 0))
        rows["passthrough_iommu_group_vfio_devices"].append((g, len(st.vfio)))
        rows["passthrough_iommu_group_host_devices"].append((g, len(st.host)))
    rows["passthrough_iommu_group_layout_hash"].append(((), facts.layout_id))
    rows["passthrough_iommu_enabled"].append(((), 1 if inv.host.iommu_groups_present else 0))
    if inv.host.interrupt_remapping is not None:
        rows["passthrough_interrupt_remapping_enabled"].append(((), 1 if inv.host.interrupt_remapping else 0))
    # Absent when unknown, like remapping: no alert fires on a guess.
    for name, backend in (("passthrough_vfio_cdev_enabled", "cdev"), ("passthrough_iommufd_enabled", "iommufd")):
        if facts.backends[backend] is not None:
            rows[name].append(((), 1 if facts.backends[backend] else 0))
    rows["passthrough_isolation_weakened"] += [((r,), 1 if facts.weakened[r] else 0) for r in WEAKENED_REASONS]
    rows["passthrough_finding"] += [((f.code, f.severity, f.subject), 1) for f in snap.findings]
    return [_family(name, r) for name, r in rows.items() if name not in STATUS_METRICS]


AER_SEVERITIES = ("correctable", "nonfatal", "fatal")


def _pci_rows(dev: Device, rows: dict[str, list[Row]], health: bool) -> None:
    """Capacity (SR-IOV, mdev) and, unless narrowed, health (link, AER, power) of one PCI function."""
    name = dev.name
    if dev.sriov_totalvfs is not None:
        rows["passthrough_sriov_vfs"].append(((name, "total"), dev.sriov_totalvfs))
        rows["passthrough_sriov_vfs"].append(((name, "enabled"), dev.sriov_numvfs or 0))
    for t in dev.mdev_types:
        if t.available is not None:
            rows["passthrough_mdev_available_instances"].append(((name, t.type_id, _label(t.name)), t.available))
        rows["passthrough_mdev_instances"].append(((name, t.type_id), t.instances))
    if not health:
        return
    for kind, speed, width in zip(("current", "max"), dev.link_speed, dev.link_width):
        if speed is not None:
            rows["passthrough_pcie_link_speed_gts"].append(((name, kind), speed))
        if width is not None:
            rows["passthrough_pcie_link_width"].append(((name, kind), width))
    for severity, count in zip(AER_SEVERITIES, dev.aer_errors):
        if count is not None:
            rows["passthrough_pcie_aer_errors"].append(((name, severity), count))
    if dev.power_state is not None:
        rows["passthrough_device_power_state"].append(((name, dev.power_state), 1))


def _vgpu_rows(snap: Snapshot, rows: dict[str, list[Row]]) -> None:
    """NVIDIA's vendor-specific vGPU per PF and type: VFs without a type on which it can be created
    now, and VFs carrying it. Free capacity is the live rule's own answer: a VF counts only when
    "no type set" is its one blocker (not assigned, in use, ineligible nor blocked by anything
    else). A VF whose type cannot be read counts in neither."""
    inv, states, blocked_by = snap.inventory, snap.states, snap.blocked_by
    for pf, names in snap.facts.vgpu_names.items():  # every PF with a vGPU VF, in inventory order
        counts: dict[int, list[int]] = {}  # type -> [available, instances]
        for vf in inv.virtual_functions(pf):
            dev = inv.devices[vf]
            if not dev.nvidia_vgpu:
                continue
            free = states.get(vf) == "blocked" and blocked_by.get(vf) == NO_VGPU_TYPE
            for type_id in {t.type_id for t in dev.vgpu_creatable or ()}:  # a type listed twice is one
                counts.setdefault(type_id, [0, 0])[0] += 1 if free else 0
            if dev.vgpu_type:
                counts.setdefault(dev.vgpu_type, [0, 0])[1] += 1
        for type_id, (available, carried) in sorted(counts.items()):
            labels = (pf, str(type_id), names.get(type_id, ""))
            rows["passthrough_vgpu_available"].append((labels, available))
            rows["passthrough_vgpu_instances"].append((labels, carried))


def _pools(snap: Snapshot, types: set[str]) -> list[Row]:
    """Devices per model, NUMA node and state: what a scheduler can hand out, summed across a fleet.
    Virtual functions count here even with --metrics.skip-vfs: they are most of an SR-IOV pool."""
    pools: Counter[tuple[str, ...]] = Counter()
    states = snap.states
    for dev in snap.inventory:
        if dev.type in types and dev.type in PASSABLE_TYPES:
            # The product as the label will read (`visible`): two names that only differ by a control
            # character and its written-out form are one series, never two with the same labels.
            pools[(dev.type, _label(dev.vendor_id), _label(dev.product_id), visible(_label(dev.product)),
                   _label(dev.numa_node), states.get(dev.name, "ineligible"))] += 1
    return sorted(pools.items())


class SnapshotCollector:
    """A prometheus-client collector (register it in a CollectorRegistry) for one snapshot at a time."""

    def __init__(self, snapshot: Callable[[], Snapshot], options: MetricOptions | None = None) -> None:
        self._snapshot = snapshot
        self.options = options or MetricOptions()

    def describe(self) -> list[Metric]:
        return []  # unknown until collect(): keeps registration free of a source read

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for fam in families(self._snapshot(), self.options):  # one snapshot for every family
            cls = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
            metric = cls(fam.name, fam.documentation, labels=list(fam.labels))
            for values, value in fam.rows:  # a family without labels has one row, or none (unknown)
                metric.add_metric([visible(v) for v in values], value)  # as `render` writes them
            yield metric


def render(snapshot: Snapshot, options: MetricOptions | None = None) -> bytes:
    """The text exposition of one snapshot: byte for byte what prometheus-client's generate_latest
    writes for SnapshotCollector, without building a Sample per series (5x faster on big hosts)."""
    return render_families(families(snapshot, options or MetricOptions()))


def render_host(snapshot: Snapshot, options: MetricOptions) -> bytes:
    """The exposition without the status families, which `serve`'s server writes itself (status.py)."""
    return render_families(host_families(snapshot, options))
