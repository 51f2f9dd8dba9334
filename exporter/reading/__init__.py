"""Reading the host: the first layer above the shared modules at the package's root.

- `sysfs/`: the sysfs library, how a file of sysfs or procfs is read and parsed;
- `sources/`: the sources (`--source`), each turning the host into an `Inventory`;
- `pciids`: vendor and device names from the system's pci.ids.

May import: the package's root modules (`model`, `settings`, `inputs`, `textsafe`, `logs`,
`buildinfo`) and its own modules. Knows nothing of the rules, the metrics, the server or the commands.
"""
