"""The libvirt source: node devices and VM assignments through one read-only libvirt connection.

The connection is opened once and reused by every read (Kimchi exhausted libvirtd's client
slots by opening one per request). A dead connection is dropped and reopened; when reopening
fails, further attempts wait out an exponential backoff so a down libvirtd is not hammered
by every refresh.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

import libvirt

from ...model import Device, HostFacts, Inventory
from ..state import BootState
from . import SOURCES, SourceError
from .libvirt_assign import assign
from .libvirt_fill import SysfsFiller
from .libvirt_xml import BadXML, NodeDevice, domain_hostdevs, node_device

log = logging.getLogger(__name__)

BACKOFF_START = 1.0  # seconds
BACKOFF_MAX = 60.0


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; errors reach us as exceptions and get logged."""


class LibvirtSource:
    """Reads node devices and domains from a libvirt URI (qemu:///system, test:///path/host.xml ...)."""

    name = "libvirt"
    error_kinds = SOURCES["libvirt"].error_kinds

    def __init__(
        self,
        uri: str = "qemu:///system",
        sysfs_path: str | None = "/sys",
        procfs_path: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        scan_processes: bool = True,
        state: BootState | None = None,
    ) -> None:
        self.uri = uri
        self._clock = clock
        self._conn: libvirt.virConnect | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        # The host's sysfs only describes the devices of a local libvirt.
        remote = bool(urlsplit(uri).hostname)
        self._filler = SysfsFiller(sysfs_path, procfs_path, scan_processes) if sysfs_path and not remote else None
        self.state = None if remote else state  # another host's boots are not this host's boot id
        libvirt.registerErrorHandler(_quiet, None)

    # --- connection ----------------------------------------------------------------------

    def _alive(self) -> bool:
        try:
            return self._conn is not None and self._conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def _connection(self) -> libvirt.virConnect:
        if self._alive():
            return self._conn  # type: ignore[return-value]
        self._drop()
        now = self._clock()
        if now < self._retry_at:
            raise SourceError(f"libvirt at {self.uri} unreachable; next attempt in {self._retry_at - now:.0f}s")
        try:
            conn = libvirt.openReadOnly(self.uri)
        except libvirt.libvirtError as exc:
            self._backoff = min(BACKOFF_MAX, self._backoff * 2 or BACKOFF_START)
            self._retry_at = now + self._backoff
            raise SourceError(f"cannot open libvirt at {self.uri}: {exc}") from None
        if conn is None:  # old bindings return None instead of raising
            raise SourceError(f"cannot open libvirt at {self.uri}")
        log.info("connected to libvirt at %s (read-only)", self.uri)
        self._backoff = 0.0
        self._retry_at = 0.0
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # already gone: that is why it is being dropped

    def close(self) -> None:
        self._drop()

    # --- reading -------------------------------------------------------------------------

    def read(self) -> Inventory:
        # A connection that died since the last read (libvirtd restarted) gets one fresh retry.
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return self._read(conn)
            except libvirt.libvirtError as exc:
                if self._alive():  # the daemon answered with an error: keep the connection
                    raise SourceError(f"reading libvirt at {self.uri} failed: {exc}") from None
                if attempt == 2:
                    self._drop()
                    raise SourceError(f"reading libvirt at {self.uri} failed: {exc}") from None
                log.warning("libvirt connection to %s lost, reconnecting: %s", self.uri, exc)
                self._drop()
        raise AssertionError("unreachable")

    def _read(self, conn: libvirt.virConnect) -> Inventory:
        errors: Counter[str] = Counter()

        def count(kind: str) -> None:
            errors[kind] += 1

        nodes = _each_xml(conn.listAllDevices(0), lambda xml, _: node_device(xml, count),
                          libvirt.VIR_ERR_NO_NODE_DEVICE, "node device", count)
        devices = _attach_storage(nodes)
        host: HostFacts | None = None
        if self._filler is not None:
            devices, host = self._filler.fill(devices, errors)
        hubs = {d.parent for d in devices if d.type == "usb" and d.usb_class == "09"}
        devices = [_hub_class(d, hubs) for d in devices]
        if host is None:
            host = HostFacts(iommu_groups_present=any(d.iommu_group is not None for d in devices))

        domains = _each_xml(
            conn.listAllDomains(0),
            lambda xml, dom: (*domain_hostdevs(xml), dom.isActive() == 1),
            libvirt.VIR_ERR_NO_DOMAIN, "domain", count,
        )
        domains = [(name, active, refs) for name, refs, active in domains]
        devices, missing = assign(devices, domains, count)
        host = replace(host, missing_hostdevs=tuple(missing))
        if self.state is not None:
            host = replace(host, **self.state.facts())
        log.debug("read %d node devices and %d domains from %s", len(devices), len(domains), self.uri)
        return Inventory(devices, host, errors)


def _each_xml(objects: list, parse: Callable, gone_code: int, what: str, count: Callable[[str], None]) -> list:
    """`parse(xml, obj)` for each object's XMLDesc; a bad document or an object that vanished
    between listing and reading is skipped and counted, any other libvirt error raised."""
    out = []
    for obj in objects:
        try:
            xml = obj.XMLDesc(0)
            out.append(parse(xml, obj))
        except BadXML as exc:
            log.warning("%s %s skipped (bad_xml): %s", what, _safe_name(obj), exc)
            count("bad_xml")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != gone_code:
                raise
            log.info("%s %s vanished while reading", what, _safe_name(obj))
            count("vanished")
    return out


def _safe_name(obj: object) -> str:
    try:
        return obj.name()  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        return "?"


def _attach_storage(nodes: list[NodeDevice]) -> list[Device]:
    """Block nodes, vendor and model of a SCSI LUN live on its storage children in libvirt."""
    storage: dict[str, list[NodeDevice]] = {}
    for n in nodes:
        if n.device.type == "storage" and n.device.parent:
            storage.setdefault(n.device.parent, []).append(n)
    out = []
    for n in nodes:
        dev = n.device
        kids = storage.get(dev.name)
        if dev.type == "scsi" and kids:
            dev = replace(
                dev,
                block_devices=tuple(sorted(k.block for k in kids if k.block)),
                vendor=dev.vendor or kids[0].storage_vendor,
                product=dev.product or kids[0].storage_model,
            )
        out.append(dev)
    return out


def _hub_class(dev: Device, hubs: set[str | None]) -> Device:
    """libvirt gives no bDeviceClass; a device with a hub interface (class 09) is a hub."""
    if dev.type != "usb_device" or dev.usb_class is not None:
        return dev
    if dev.name in hubs:
        return replace(dev, usb_class="09", notes=dev.notes + ("usb_class 09 inferred from its hub interface",))
    return dev
