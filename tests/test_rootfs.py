"""Finding the devices behind the root filesystem: mountinfo, /sys/dev/block, partitions, dm/md stacks."""

from __future__ import annotations

from passthrough_exporter.reading.sysfs.rootfs import root_mount
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from tests.support import hosts
from tests.support.local import judge_tree


def read(tree):
    return SysfsSource(str(tree.sys), str(tree.proc)).read()


def test_root_mount_is_the_last_mount_on_slash_and_unescapes():
    text = (
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "30 1 254:0 / / rw shared:1 master:2 - ext4 /dev/my\\040disk rw\n"
    )
    assert root_mount(text) == ("254:0", "/dev/my disk")
    assert root_mount("22 1 0:21 / /proc rw - proc proc rw\n") is None


def test_virtio_block_root_is_the_virtio_pci_function(tree):
    hosts.virtio_root(tree)
    host = read(tree).host
    assert host.root_devices == ("pci_0000_00_02_0",)
    assert host.root_disks == ("vda",)


def test_partition_on_a_sata_lun_names_the_lun_its_scsi_path_and_the_controller(tree):
    hosts.sata_disks(tree)
    lun = tree.pci_path("0000:00:17.0") / "ata1" / "host0" / "target0:0:0" / "0:0:0:0"
    sda = tree.block("sda", parent=lun, dev="8:0")
    tree.partition(sda, "sda2", dev="8:2", number=2)
    tree.root_mount("8:2", "/dev/sda2")
    inv = read(tree)
    assert inv.host.root_devices == ("pci_0000_00_17_0", "scsi_0_0_0_0", "scsi_host0", "scsi_target0_0_0")
    assert inv.host.root_disks == ("sda2",)
    assert sum(inv.errors.values()) == 0


def test_lvm_on_nvme_follows_slaves(tree):
    hosts.nvme_lvm_root(tree)
    host = read(tree).host
    assert host.root_devices == ("pci_0000_3d_00_0",)  # not the root port above it
    assert host.root_disks == ("nvme0n1p3",)


def test_md_mirror_over_two_controllers_names_both(tree):
    hosts.sata_disks(tree)
    hosts.nvme_lvm_root(tree)
    lun = tree.pci_path("0000:00:17.0") / "ata1" / "host0" / "target0:0:0" / "0:0:0:0"
    sda1 = tree.partition(tree.block("sda", parent=lun, dev="8:0"), "sda1", dev="8:1")
    nvme_p3 = tree.sys / "class" / "block" / "nvme0n1p3"
    tree.virtual_block("md0", dev="9:0", slaves=(sda1, nvme_p3.resolve()))
    tree.root_mount("9:0", "/dev/md0")
    host = read(tree).host
    assert host.root_devices == ("pci_0000_00_17_0", "pci_0000_3d_00_0", "scsi_0_0_0_0", "scsi_host0",
                                 "scsi_target0_0_0")
    assert sorted(host.root_disks) == ["nvme0n1p3", "sda1"]


def test_anonymous_device_number_falls_back_to_the_mount_source(tree):
    hosts.nvme_lvm_root(tree)
    tree.root_mount("0:31", "/dev/mapper/vg0-root", fstype="btrfs")
    assert read(tree).host.root_devices == ("pci_0000_3d_00_0",)


def sata_and_nvme(tree):
    """sda2 on the AHCI 00:17.0 (LUN 0:0:0:0) and nvme0n1p3 on the NVMe 3d:00.0: two disks for a
    filesystem that spans both."""
    hosts.sata_disks(tree)
    hosts.nvme_lvm_root(tree)
    lun = tree.pci_path("0000:00:17.0") / "ata1" / "host0" / "target0:0:0" / "0:0:0:0"
    sda2 = tree.partition(tree.block("sda", parent=lun, dev="8:0"), "sda2", dev="8:2", number=2)
    return sda2, (tree.sys / "class" / "block" / "nvme0n1p3").resolve()


def test_a_btrfs_over_two_disks_names_both_controllers(tree):
    """btrfs RAID1 mounted by /dev/sda2 (anonymous number 0:35); /sys/fs/btrfs/<fsid>/devices links
    to both members: both controllers hold `/`."""
    sda2, nvme_p3 = sata_and_nvme(tree)
    for member in (sda2, nvme_p3):
        tree.link(tree.sys / "fs" / "btrfs" / "5c2f0a9e-fsid" / "devices" / member.name, member)
    tree.root_mount("0:35", "/dev/sda2", fstype="btrfs")
    host = read(tree).host
    assert host.root_devices == ("pci_0000_00_17_0", "pci_0000_3d_00_0", "scsi_0_0_0_0", "scsi_host0",
                                 "scsi_target0_0_0")
    assert sorted(host.root_disks) == ["nvme0n1p3", "sda2"]


def test_a_bcachefs_names_every_member_in_its_source(tree):
    sata_and_nvme(tree)
    tree.root_mount("0:36", "/dev/sda2:/dev/nvme0n1p3", fstype="bcachefs")
    host = read(tree).host
    assert "pci_0000_00_17_0" in host.root_devices and "pci_0000_3d_00_0" in host.root_devices
    # A member this sysfs does not know: which disks hold `/` cannot be told, none is traced.
    tree.root_mount("0:36", "/dev/sda2:/dev/sdz9", fstype="bcachefs")
    snap = judge_tree(tree)
    assert snap.inventory.host.root_devices == () and snap.facts.root_unknown
    assert snap.states["pci_0000_00_17_0"] == "blocked" and snap.states["pci_0000_3d_00_0"] == "blocked"


def test_root_not_on_a_block_device_is_known_empty(tree):
    hosts.virtio_root(tree)
    tree.root_mount("0:31", "overlay", fstype="overlay")
    host = read(tree).host
    assert host.root_devices == () and host.root_disks == ()


def test_without_mountinfo_the_source_cannot_tell(tree):
    hosts.base(tree)
    inv = read(tree)
    assert inv.host.root_devices is None
    assert sum(inv.errors.values()) == 0


def test_stacking_loop_terminates(tree):
    hosts.virtio_root(tree)
    a = tree.virtual_block("dm-1", dev="253:1")
    b = tree.virtual_block("dm-2", dev="253:2", slaves=(a,))
    tree.link(a / "slaves" / "dm-2", b)
    tree.root_mount("253:2", "/dev/dm-2")
    assert read(tree).host.root_devices == ()


def test_unreadable_mountinfo_is_counted(tree):
    hosts.virtio_root(tree)
    (tree.proc / "self" / "mountinfo").unlink()
    (tree.proc / "self" / "mountinfo").mkdir()  # reading a directory fails like a broken file
    inv = read(tree)
    assert inv.host.root_devices is None
    assert dict(inv.errors) == {"read_error": 1}


def test_pid_1_mount_namespace_wins_over_self(tree):
    """A containerised exporter given the host's /proc: `self` sees the overlay, PID 1 the host's disk."""
    hosts.virtio_root(tree)
    tree.write(tree.proc / "1" / "mountinfo", "27 1 254:0 / / rw - ext4 /dev/vda rw")
    tree.root_mount("0:52", "overlay", fstype="overlay")
    assert read(tree).host.root_devices == ("pci_0000_00_02_0",)


def test_judging_still_works(tree):
    hosts.virtio_root(tree)
    assert "pci_0000_00_02_0" in judge_tree(tree).verdicts


def test_mountinfo_garbage_never_raises():
    from hypothesis import given, strategies as st

    @given(st.text(alphabet=st.sampled_from(list("0123456789:/ -\\\n\tabc")), max_size=300))
    def prop(text):
        result = root_mount(text)
        assert result is None or isinstance(result[0], str)

    prop()
