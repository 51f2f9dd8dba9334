"""What the tests and the benchmarks share, one module a concern:

- client: every request to a server on the loopback address (HTTP, TLS, raw bytes), free ports,
  and the wait until a server answers;
- sysfs_builder: sysfs and procfs trees shaped like the kernel's;
- hosts: small fixture hosts worked out by hand; synthetic: generated hosts of thousands of devices;
- libvirt_host: a tree rendered for libvirt's test driver; umockdev_tree: a umockdev recording as a tree;
- local: the exporter in the test's own process (refresher, server, a tree served and scraped);
- process: the exporter as a process of its own, and what /proc says of a process;
- parse: logfmt lines, expositions and strict JSON read back.

Fixtures built from them are in tests/conftest.py."""
