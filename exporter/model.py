"""The device model: immutable devices, host facts and the indexed inventory built from them.

Sources build an `Inventory` once per read; everything after that (rules, affected sets,
metrics, the API) only queries it, in O(1) or O(answer) per question.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

log = logging.getLogger(__name__)

COMPUTER = "computer"

# Types that can be handed to a VM at all; everything else is structure around them.
PASSABLE_TYPES = ("pci", "usb_device", "scsi")
KNOWN_TYPES = ("system", "pci", "usb_device", "usb", "scsi_host", "scsi_target", "scsi")

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def device_name(subsystem: str, sysname: str) -> str:
    """libvirt's node-device name: `<subsystem>_<sysname>`, non-alphanumerics as `_`."""
    return f"{subsystem}_{_NON_ALNUM.sub('_', sysname)}"


@dataclass(frozen=True, slots=True)
class Device:
    """One host device. Fields that do not apply to a type stay at their default."""

    name: str
    type: str
    parent: str | None = COMPUTER  # declared parent; None only for the computer itself
    address: str | None = None  # the sysfs name: 0000:00:19.0, 1-1.2, 0:0:0:0, host0
    vendor_id: str | None = None  # "0x8086"
    product_id: str | None = None  # "0x1533"
    vendor: str | None = None
    product: str | None = None
    pci_class: str | None = None  # "0x030000"
    subsystem_vendor_id: str | None = None
    subsystem_product_id: str | None = None
    # Who the device is, where the address says only where it sits: the serial number the host gives.
    # PCI: the NVMe controller's `nvme/nvme<N>/serial`, else the `SN` keyword of `vpd` (root only);
    # USB device: `serial`. None when the host gives none (or not to this user).
    serial: str | None = None
    driver: str | None = None
    iommu_group: int | None = None
    numa_node: int | None = None
    # PCI: the root bus directory above the function in /sys/devices ("pci0000:40"): which PCIe root
    # complex it hangs below, as Kubernetes DRA's resource.kubernetes.io/pcieRoot spells it.
    pcie_root: str | None = None
    boot_vga: bool = False
    reset_methods: tuple[str, ...] | None = None  # None: kernel does not say; () no reset at all
    header_type: int | None = None  # PCI header layout, multi-function bit masked off
    physfn: str | None = None  # the PF's name, for an SR-IOV virtual function
    virtfns: tuple[str, ...] = ()  # the VFs' names, for an SR-IOV physical function
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    usb_class: str | None = None  # bDeviceClass or bInterfaceClass, two hex digits
    busnum: int | None = None
    devnum: int | None = None
    scsi_type: int | None = None  # SCSI peripheral type (0 disk, 5 cd-rom, ...)
    block_devices: tuple[str, ...] = ()  # sda, sr0 ...: block nodes of a SCSI LUN
    # Capacity and health (PCI), each None when the kernel does not say.
    link_speed: tuple[float | None, float | None] = (None, None)  # GT/s: current, max
    link_width: tuple[int | None, int | None] = (None, None)  # lanes: current, max
    aer_errors: tuple[int | None, int | None, int | None] = (None, None, None)  # correctable, nonfatal, fatal
    power_state: str | None = None  # D0, D1, D2, D3hot, D3cold
    mdev_types: tuple[MdevType, ...] = ()
    # NVIDIA's vendor-specific vGPU (no mdev): an SR-IOV VF of the GPU with a `nvidia/` directory.
    # `nvidia_vgpu` says the directory is there, so a type that cannot be read (vgpu_type None) is
    # told from a function without one: the first is blocked, never "available". None: not read, by
    # a source without the host's sysfs (libvirt's XML has no nvidia/), or on a function that is not
    # a VF (only VFs carry a type); the sysfs reader says True or False for every VF.
    nvidia_vgpu: bool | None = None
    vgpu_type: int | None = None  # nvidia/current_vgpu_type: 0 none set, else the type's id; None unknown
    # nvidia/creatable_vgpu_types: the types that can be created on this VF now; None unknown
    vgpu_creatable: tuple[VgpuType, ...] | None = None
    vfio_dev: str | None = None  # "vfio3": the kernel's VFIO device node (vfio-dev/), when it has one
    # PCI: whether the kernel gave the function a VFIO cdev (/dev/vfio/devices/vfio<N>): True when
    # `vfio-dev/vfio<N>/` lists `dev` (whatever its content), False when the function's directory has
    # no `vfio-dev/` (no VFIO device, or a kernel before 6.1) or the node lists no `dev` (a kernel
    # without CONFIG_VFIO_DEVICE_CDEV). None: cannot be told (vfio-dev/ or the node cannot be listed,
    # vfio-dev/ names no vfio<N>, or the source did not read the function's sysfs directory).
    vfio_cdev: bool | None = None
    # (major, minor) of the device's own character device: PCI `vfio-dev/vfio<N>/dev` (its VFIO
    # cdev), USB device `dev` (its usbfs node). What a holder's open file must be to hold it.
    char_dev: tuple[int, int] | None = None
    enabled: bool | None = None  # PCI `enable`: the device is enabled (VFIO: a user-space driver has it open)
    unreachable: bool = False  # PCI config space reads all ones: the device fell off the bus
    # Every libvirt domain configured with the device: (name, running), running ones first.
    assignments: tuple[tuple[str, bool], ...] = ()
    assigned_to: str | None = None  # the first of `assignments`: a running domain if one is, else the first by name
    assigned_running: bool | None = None  # whether that domain runs
    notes: tuple[str, ...] = ()  # where a source filled or doubted a field


@dataclass(frozen=True, slots=True)
class MdevType:
    """One kind of mediated device (a vGPU profile) a PCI function can be carved into."""

    type_id: str  # nvidia-63, i915-GVTg_V5_4 ...
    name: str | None  # the vendor's name: "GRID T4-2Q"
    device_api: str | None  # vfio-pci ...
    available: int | None  # instances that can still be created
    instances: int  # instances that exist


@dataclass(frozen=True, slots=True)
class VgpuType:
    """One line of a VF's `nvidia/creatable_vgpu_types`: `1414 : NVIDIA H200X-1-18C`."""

    type_id: int  # 1414
    name: str  # "NVIDIA H200X-1-18C"


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that has a device node open: a VM's QEMU, or any user-space driver."""

    pid: int
    process: str  # its `comm`
    vm: str | None = None  # the guest's name from QEMU's `-name`, else None

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "pid": self.pid, "process": self.process}


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the host says about its IOMMU and isolation, beside the devices."""

    iommu_groups_present: bool = False  # groups backed by an IOMMU (not VFIO's no-IOMMU ones)
    noiommu_groups: frozenset[int] = frozenset()  # VFIO's no-IOMMU groups: class/vfio/noiommu-<N>
    iommu_units: tuple[str, ...] = ()  # /sys/class/iommu entries: dmar0, ivhd0 ...
    cmdline: str | None = ""  # None: <procfs>/cmdline could not be read
    # "module.parameter" -> value, e.g. "vfio_iommu_type1.allow_unsafe_interrupts" -> "N"
    module_params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Devices behind the root filesystem: the PCI function(s) and any listed device between them
    # and the disk (SCSI LUN, USB device...). None: the source cannot tell; (): none was found.
    root_devices: tuple[str, ...] | None = None
    root_disks: tuple[str, ...] = ()  # the block devices those were found from: vda, sda2, nvme0n1
    # Interrupt remapping, from the interrupt chips in <procfs>/interrupts: None when unknown.
    interrupt_remapping: bool | None = None
    acpi_iommu_tables: tuple[str, ...] = ()  # DMAR (Intel) / IVRS (AMD): the firmware describes an IOMMU
    # IOMMU group -> (major, minor) of its VFIO group character device, `<sysfs>/class/vfio/<N>/dev`.
    vfio_groups: Mapping[int, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))
    # IOMMU groups with a `direct` line in `<sysfs>/kernel/iommu_groups/<N>/reserved_regions`: a 1:1
    # mapping the firmware requires (an RMRR), for which the kernel refuses VFIO. `direct-relaxable`
    # (USB, graphics) does not count. A group without the file (before 4.11) is not in it: unknown.
    rmrr_groups: frozenset[int] = frozenset()
    # The iommufd device (/dev/iommu) exists: `<sysfs>/class/misc/iommu`, there while the iommufd
    # module is loaded or built in. None: the tree has no `class/misc` at all (every kernel has misc
    # devices, so a partial capture or a source without sysfs), which cannot tell.
    iommufd: bool | None = None
    # (major, minor) of a group's or a device's character device (`vfio_groups`, Device.char_dev)
    # -> the process that has it open for writing. None: the processes were not scanned (switched
    # off, or nothing readable).
    holders: Mapping[tuple[int, int], Holder] | None = None
    # libvirt: (domain, what its <hostdev> names) for host devices this host does not have.
    missing_hostdevs: tuple[tuple[str, str], ...] = ()
    # Upgrade impact: this boot's id (<procfs>/sys/kernel/random/boot_id; None when unreadable), and
    # what the state file (--state.path) said about the previous boot. `state_read` False: the state
    # was not consulted (--no-state, or a source used without it); `state_problem` says in one line why
    # it could not be used (unreadable, corrupt, newer version, no boot id); `previous_boot` None
    # with neither: no earlier boot on record (the first boot, or a fresh start).
    boot_id: str | None = None
    state_read: bool = False
    state_problem: str | None = None
    previous_boot: BootRecord | None = None

    def cmdline_params(self) -> dict[str, str]:
        """The kernel command line as key -> value (flags map to "")."""
        out: dict[str, str] = {}
        for word in (self.cmdline or "").split():
            if word == "--":  # the rest belongs to init
                break
            key, _, value = word.partition("=")
            out[key] = value
        return out


BOOT_RECORD_VERSION = 1
RECORDED_TYPES = ("pci", "usb_device")  # what a boot record keeps: what can be handed to a VM by address


def _serial_digest(serial: str | None) -> str | None:
    """A serial as the record keeps it: a digest, enough to tell two units apart, not the number."""
    if serial is None:
        return None
    return "sha256:" + hashlib.sha256(serial.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One PCI function or USB device as a boot saw it: who it is (ids, class, serial digest), its
    IOMMU group and its driver. A field the host did not give is None: unknown, never a difference."""

    name: str
    type: str
    address: str | None = None
    vendor_id: str | None = None
    product_id: str | None = None
    subsystem_vendor_id: str | None = None
    subsystem_product_id: str | None = None
    device_class: str | None = None  # PCI class "0x030000", or the USB device class "09"
    serial: str | None = None  # "sha256:...": a digest of Device.serial, never the serial itself
    iommu_group: int | None = None
    driver: str | None = None

    IDENTITY = ("vendor_id", "product_id", "subsystem_vendor_id", "subsystem_product_id", "device_class", "serial")

    @classmethod
    def of(cls, dev: Device) -> DeviceRecord:
        return cls(dev.name, dev.type, dev.address, dev.vendor_id, dev.product_id, dev.subsystem_vendor_id,
                   dev.subsystem_product_id, dev.pci_class if dev.type == "pci" else dev.usb_class,
                   _serial_digest(dev.serial), dev.iommu_group if dev.type == "pci" else None, dev.driver)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]

    @classmethod
    def from_json(cls, data: object) -> DeviceRecord:
        """ValueError when `data` is not a record this version wrote."""
        if not isinstance(data, dict):
            raise ValueError("a device record is not an object")
        fields: dict[str, Any] = {}
        for name in cls.__slots__:  # type: ignore[attr-defined]
            value = data.get(name)
            if name == "iommu_group":
                ok = value is None or (type(value) is int and value >= 0)
            elif name in ("name", "type"):
                ok = isinstance(value, str)
            else:
                ok = value is None or isinstance(value, str)
            if not ok:
                raise ValueError(f"device record field {name}: {value!r}")
            fields[name] = value
        return cls(**fields)


def known_version(version: object, newest: int, what: str) -> None:
    """ValueError unless `version` is one this exporter reads (1 up to `newest`): a file of a newer
    exporter is refused, never read as if it were this one's."""
    if type(version) is not int or version < 1:
        raise ValueError(f"{what} without a version ({version!r})")
    if version > newest:
        raise ValueError(f"{what} of version {version}, written by a newer exporter (this one reads {newest})")


@dataclass(frozen=True, slots=True)
class BootRecord:
    """What one boot's devices were (RECORDED_TYPES, by name), to compare the next boot with."""

    boot_id: str | None
    devices: tuple[DeviceRecord, ...] = ()  # sorted by name

    @classmethod
    def of(cls, inventory: Inventory, boot_id: str | None = None) -> BootRecord:
        """The record of an inventory (this boot's id from its host facts unless given)."""
        bid = boot_id if boot_id is not None else inventory.host.boot_id
        # SR-IOV virtual functions are not recorded: they are made after boot (sriov_numvfs), so a boot's
        # first refresh may come before them; a domain naming one that is missing is hostdev_missing.
        return cls(bid, tuple(DeviceRecord.of(d) for d in inventory
                              if d.type in RECORDED_TYPES and d.physfn is None))

    def by_name(self) -> dict[str, DeviceRecord]:
        return {d.name: d for d in self.devices}

    def groups(self) -> dict[int, frozenset[str]]:
        """IOMMU group number -> the names of its members."""
        out: dict[int, set[str]] = {}
        for d in self.devices:
            if d.iommu_group is not None:
                out.setdefault(d.iommu_group, set()).add(d.name)
        return {k: frozenset(v) for k, v in sorted(out.items())}

    def to_json(self) -> dict[str, Any]:
        return {"version": BOOT_RECORD_VERSION, "boot_id": self.boot_id,
                "devices": [d.to_json() for d in self.devices]}

    @classmethod
    def from_json(cls, data: object) -> BootRecord:
        """ValueError when `data` is not a record, or one of a version this one does not know."""
        if not isinstance(data, dict):
            raise ValueError("a boot record is not an object")
        known_version(data.get("version"), BOOT_RECORD_VERSION, "boot record")
        boot_id, devices = data.get("boot_id"), data.get("devices")
        if not (boot_id is None or isinstance(boot_id, str)) or not isinstance(devices, list):
            raise ValueError("boot record without boot_id or devices")
        records = sorted((DeviceRecord.from_json(d) for d in devices), key=lambda d: d.name)
        if len({d.name for d in records}) != len(records):
            raise ValueError("boot record with a device named twice")
        return cls(boot_id, tuple(records))


@dataclass(frozen=True, slots=True)
class Verdict:
    """One plugin's ruling on one device.

    `eligible` None is no ruling: only caveats (`warnings`) for when another plugin allows it.
    """

    eligible: bool | None
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @classmethod
    def allow(cls, reason: str, *warnings: str) -> Verdict:
        return cls(True, (reason,), tuple(warnings))

    @classmethod
    def deny(cls, reason: str, *warnings: str) -> Verdict:
        return cls(False, (reason,), tuple(warnings))

    @classmethod
    def warn(cls, *warnings: str) -> Verdict:
        """Neither allow nor deny: warnings shown only if the device ends up eligible."""
        return cls(None, (), tuple(warnings))


SEVERITIES = ("info", "warning", "critical")
_NUMBERED = re.compile(r"([a-z]+:)([0-9]{1,18})")  # group:12 (device names are fixed-width hex: text order)


def natural_key(text: str) -> tuple[str, int]:
    """group:2 before group:10 and group:101 before group:1009; every other subject in text order
    (pci_0000_00_02_0 before pci_0000_00_10_0 before pci_0000_1a_00_0: fixed-width hex)."""
    m = _NUMBERED.fullmatch(text)
    return (m.group(1), int(m.group(2))) if m else (text, -1)


@dataclass(frozen=True, slots=True)
class Finding:
    """A safety observation about the host, an IOMMU group or a device."""

    code: str  # stable machine name, e.g. "iommu_off_kernel"
    severity: str  # info | warning | critical
    subject: str  # "host", "group:12", "domain:NAME" or a device name
    message: str
    fix: str = ""  # one sentence an operator can act on; "" when there is nothing to do

    def __post_init__(self) -> None:
        # They become label values: anything but text would break the exposition later, far from here.
        for name in ("code", "severity", "subject", "message", "fix"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Finding.{name} must be a string, not {type(getattr(self, name)).__name__}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def order(self) -> tuple[int, str, tuple[str, int]]:
        """Where it is listed: critical first, then by code, then by subject in natural order."""
        return (-SEVERITIES.index(self.severity), self.code, natural_key(self.subject))

    def to_json(self) -> dict[str, Any]:
        """The finding as `/api/findings` and `check --json` print it."""
        return {"code": self.code, "severity": self.severity, "subject": self.subject,
                "message": self.message, "fix": self.fix or None}


@dataclass(frozen=True, slots=True, eq=False)
class AffectedSet:
    """What leaves the host with one device: a part shared with other devices, kept by reference
    (the frozenset of an IOMMU group and everything below it: one set for a group of 5,000
    functions, not 5,000 copies), and the device's own extras. The device itself is never counted.
    """

    device: str
    shared: frozenset[str] = frozenset()  # may hold `device`
    own: frozenset[str] = frozenset()  # disjoint from `shared`, without `device`

    def __len__(self) -> int:
        return len(self.shared) - (self.device in self.shared) + len(self.own)

    def names(self) -> tuple[str, ...]:
        """The sorted names: built on demand, for one device at a time."""
        return tuple(sorted(n for part in (self.shared, self.own) for n in part if n != self.device))

    # A value: the sorted names, whatever parts they are kept in.
    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name != self.device and (name in self.shared or name in self.own)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AffectedSet):
            return self.names() == other.names()
        if isinstance(other, tuple):
            return self.names() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.names())


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the `check` report: a title and the finding codes it covers."""

    title: str
    codes: tuple[str, ...]


class Inventory:
    """Every device of one read, with the indexes the questions need.

    Built once; never changed afterwards: its mappings are read-only views, and its attributes
    cannot be reassigned (every plugin is handed the same inventory; one that swapped a part would
    change what the others judge). A declared parent that does not exist, a device
    that is its own parent or a parent cycle leaves the device in place but unlinked from the
    tree (logged and counted in `errors`), so walking the tree always terminates.
    """

    __slots__ = ("devices", "host", "children", "groups", "errors", "_vfs_of")

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, name):  # set once, by __init__
            raise AttributeError(f"Inventory.{name} cannot be reassigned: an inventory is read-only")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Inventory.{name} cannot be deleted: an inventory is read-only")

    def __init__(
        self,
        devices: Iterable[Device],
        host: HostFacts | None = None,
        errors: Mapping[str, int] | None = None,
    ) -> None:
        errs: Counter[str] = Counter(errors or {})
        by_name: dict[str, Device] = {}
        for dev in devices:
            if dev.name in by_name:
                log.warning("device listed twice, keeping the first: %s", dev.name)
                errs["duplicate"] += 1
                continue
            by_name[dev.name] = dev
        if COMPUTER not in by_name:
            by_name[COMPUTER] = Device(name=COMPUTER, type="system", parent=None)

        linked = _linked_parents(by_name, errs)
        children: dict[str, list[str]] = {}
        groups: dict[int, list[str]] = {}
        physfn_of: dict[str, list[str]] = {}  # PF -> the present devices whose `physfn` names it
        for name in sorted(by_name):
            parent = linked.get(name)
            if parent is not None:
                children.setdefault(parent, []).append(name)
            dev = by_name[name]
            if dev.iommu_group is not None and dev.type == "pci":  # groups hold PCI functions only
                groups.setdefault(dev.iommu_group, []).append(name)
            if dev.physfn is not None and dev.physfn != name:
                physfn_of.setdefault(dev.physfn, []).append(name)

        self.devices: Mapping[str, Device] = MappingProxyType(dict(sorted(by_name.items())))
        self.host: HostFacts = host or HostFacts()
        self.children: Mapping[str, tuple[str, ...]] = MappingProxyType(
            {k: tuple(v) for k, v in children.items()}
        )
        self.groups: Mapping[int, tuple[str, ...]] = MappingProxyType(
            {k: tuple(v) for k, v in sorted(groups.items())}
        )
        self.errors: Mapping[str, int] = MappingProxyType(dict(errs))
        # PF -> its present VFs, by either link (see virtual_functions): once per read, as every PCI
        # function's affected set and state ask for it.
        vfs_of: dict[str, tuple[str, ...]] = {}
        for name, dev in by_name.items():
            if dev.virtfns or name in physfn_of:
                listed = [vf for vf in dev.virtfns if vf in by_name]
                found = tuple(dict.fromkeys((*listed, *physfn_of.get(name, ()))))
                if found:
                    vfs_of[name] = found
        self._vfs_of: Mapping[str, tuple[str, ...]] = MappingProxyType(vfs_of)

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices.values())

    def __contains__(self, name: object) -> bool:
        return name in self.devices

    def get(self, name: str) -> Device | None:
        return self.devices.get(name)

    def descendants(self, name: str) -> Iterator[str]:
        """Every device below `name` in the tree, depth first."""
        stack = list(reversed(self.children.get(name, ())))
        while stack:
            child = stack.pop()
            yield child
            stack.extend(reversed(self.children.get(child, ())))

    def group_peers(self, name: str) -> tuple[str, ...]:
        """The other devices in `name`'s IOMMU group (empty without a group)."""
        dev = self.devices.get(name)
        if dev is None or dev.iommu_group is None:
            return ()
        return tuple(n for n in self.groups.get(dev.iommu_group, ()) if n != name)

    def virtual_functions(self, name: str) -> tuple[str, ...]:
        """The SR-IOV VFs of a PF that are present in this inventory: those its `virtfns` lists (in
        its order), then any other whose `physfn` names it (by name). Either link may be missing
        from a read (a PF without `virtfn*` links, a VF without `physfn`); a VF is the PF's if
        either says so. A listed VF that is not present is not here: see `Device.virtfns`."""
        return self._vfs_of.get(name, ())


def _linked_parents(devices: Mapping[str, Device], errors: Counter[str]) -> dict[str, str]:
    """Parent links that are safe to follow: the target exists and no cycle goes through it."""
    linked: dict[str, str] = {}
    for name, dev in devices.items():
        parent = dev.parent
        if parent is None:
            continue
        if parent == name:
            log.warning("device is its own parent, link skipped: %s", name)
            errors["parent_cycle"] += 1
        elif parent not in devices:
            log.warning("parent %s of device %s does not exist, link skipped", parent, name)
            errors["missing_parent"] += 1
        else:
            linked[name] = parent
    # Break cycles: walk up from each device; colour 1 = on the current path, 2 = known to reach a root.
    state: dict[str, int] = {}
    for start in sorted(linked):
        path: list[str] = []
        node: str | None = start
        while node is not None and node in linked and state.get(node) is None:
            state[node] = 1
            path.append(node)
            node = linked[node]
        if node is not None and state.get(node) == 1:
            log.warning("parent cycle through %s, link skipped", node)
            errors["parent_cycle"] += 1
            del linked[node]
        for p in path:
            state[p] = 2
    return linked
