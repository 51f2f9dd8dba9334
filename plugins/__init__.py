"""The built-in rule plugins, each registered through the `passthrough_exporter.plugins` entry points
like any third party's: the rules of the judging layer.

- `pci`, `usb`, `scsi`: which devices of each bus are eligible and what goes along with each;
- `safety`: whether IOMMU isolation is real, and the devices the host needs;
- `assignments`: which VM has which device; `health`: PCIe links and fatal errors;
- `policy/`: the site's `--policy` file (allow/deny rules and expected devices).

May import: the package's root modules, `reading` and `judging` (as a third-party plugin would, but
relatively). Knows nothing of the metrics, the server or the commands.
"""
