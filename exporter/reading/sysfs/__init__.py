"""The sysfs library: how host data is read from sysfs and procfs, for every part that reads it.

- `files`: non-blocking, bounded, traceable file access (`Reader`, `Trace`);
- `attrs`: parsing attribute text (hex ids, numbers, escaped bytes);
- `devices`: one reader per bus (PCI, USB, SCSI), a device directory -> a device's fields;
- `vpd`: a PCI function's Vital Product Data -> its identifier, part number and serial number;
- `host`: IOMMU and isolation facts of the host;
- `rootfs`: which devices hold the root filesystem.

The sysfs source, the libvirt source's fill and the capture command all read through it.
"""

from .attrs import ATTR_LIMIT, BadAttribute, decode_attr, dev_number, escape_bytes, hex_id, parse_int
from .files import ERROR_KINDS, Reader, Trace, error_kind, read_bytes, read_opened

__all__ = [
    "ATTR_LIMIT", "BadAttribute", "decode_attr", "dev_number", "escape_bytes", "hex_id", "parse_int",
    "ERROR_KINDS", "Reader", "Trace", "error_kind", "read_bytes", "read_opened",
]
