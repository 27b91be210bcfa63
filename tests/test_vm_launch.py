"""The VM keep's pieces that need no VM: qemu's command line (what the guest
gets, and what it does not), the accelerator choice, and the guest's search
for its sallyport port."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmkeep.host.process_keep import ProcessKeepOptions
from wasmkeep.host.vm import launch
from wasmkeep.host.vm.launch import VmKeepOptions, qemu_command
from wasmkeep.keep.vm import find_port


def options() -> VmKeepOptions:
    return VmKeepOptions(
        keep=ProcessKeepOptions(max_memory=64 << 20),
        kernel=Path("/images/vmlinuz"),
        initrd=Path("/images/initrd.img"),
        cmdline="console=ttyS0 panic=-1",
    )


def test_the_guest_gets_a_kernel_a_console_and_one_port() -> None:
    command = qemu_command(
        options(), "tcg", Path("/private/sallyport"), Path("/private/console"), 700
    )
    text = " ".join(command)
    assert command[0] == "qemu-system-x86_64"
    assert "-machine q35,sata=off,smbus=off,usb=off,graphics=off,vmport=off " in text
    assert "-accel tcg -cpu max" in text
    assert "-m 700M" in text
    assert "-kernel /images/vmlinuz -initrd /images/initrd.img" in text
    assert command[command.index("-append") + 1] == "console=ttyS0 panic=-1"
    assert "socket,id=sallyport,path=/private/sallyport" in text
    assert "virtserialport,chardev=sallyport,name=sallyport" in text
    # Nothing else: no defaults, no network, no disk, no shared directory, no display.
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in command
    for absent in ("-netdev", "-nic", "-net", "-drive", "-hda", "-virtfs", "-fsdev", "-vnc"):
        assert absent not in command
    assert [item for item in command if item.startswith("virtio-") or "virtserialport" in item] == [
        "virtio-serial-pci",
        "virtserialport,chardev=sallyport,name=sallyport",
    ]
    kvm = qemu_command(options(), "kvm", Path("/s"), Path("/c"), 700)
    assert "-accel kvm -cpu host" in " ".join(kvm)


def test_kvm_is_chosen_only_when_it_runs_a_guest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wasmkeep.host.platform import _probes
    from wasmkeep.host.platform._probes import ProbeResult

    device = tmp_path / "kvm"
    assert launch.choose_accelerator(device) == ("tcg", f"{device} is absent")
    device.write_text("")
    monkeypatch.setattr(_probes, "probe_open_read_write", lambda path: ProbeResult(True, "ok"))
    monkeypatch.setattr(
        _probes, "probe_kvm_run_guest", lambda path: ProbeResult(False, "emulation failed")
    )
    assert launch.choose_accelerator(device) == (
        "tcg",
        "KVM cannot run a guest here: emulation failed",
    )
    monkeypatch.setattr(_probes, "probe_kvm_run_guest", lambda path: ProbeResult(True, "ran"))
    assert launch.choose_accelerator(device)[0] == "kvm"


def test_the_guest_finds_its_port_by_name(tmp_path: Path) -> None:
    ports = tmp_path / "sys" / "class" / "virtio-ports"
    for name, label in (("vport0p1", "other"), ("vport1p1", "sallyport")):
        (ports / name).mkdir(parents=True)
        (ports / name / "name").write_text(label + "\n")
    assert find_port(sysfs=tmp_path / "sys", dev=Path("/dev")) == Path("/dev/vport1p1")
    with pytest.raises(FileNotFoundError, match="no virtio-serial port named 'nothing'"):
        find_port("nothing", sysfs=tmp_path / "sys")
    with pytest.raises(FileNotFoundError):
        find_port(sysfs=tmp_path / "empty")
