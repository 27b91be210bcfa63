"""The expected SEV-SNP launch digest of the VM keep (`wasmkeep vm measure`).

When the vm backend launches its keep as an SEV-SNP guest, the AMD secure
processor measures what it is given before the guest runs (SEV-SNP ABI spec,
8.17, SNP_LAUNCH_UPDATE): every page of the firmware, the pages its SEV
metadata names (among them the kernel-hashes page, where QEMU has written the
SHA-256 of the kernel, the initrd and the command line), and the VMSA of each
vCPU. The result is the report's MEASUREMENT, which a Steward policy pins
(``[snp] measurements``). This module computes it ahead of time with
sev-snp-measure (the virtee project's implementation of the same steps), for
the image's files, the firmware, and the vCPUs the keep is launched with
(`confidential.SNP_VCPUS` x `confidential.SNP_CPU`).

Checked here only against a synthetic firmware (tests/test_vm_confidential.py):
no SEV-SNP machine has confirmed the digest of a real launch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmkeep.errors import EXIT_USAGE, WasmkeepError
from wasmkeep.host.vm.confidential import (
    SNP_CPU,
    SNP_GUEST_FEATURES,
    SNP_VCPUS,
    FirmwareError,
    check_firmware,
)
from wasmkeep.host.vm.image import VmImage
from wasmkeep.printable import shown

__all__ = ["MAX_VCPUS", "MeasurementError", "SnpMeasurement", "measure_snp", "vcpu_types"]

#: As many vCPUs as a VM can have (KVM's limit on x86); each adds a VMSA.
MAX_VCPUS = 4096
#: Version of the `vm measure --json` document.
DOCUMENT_VERSION = 1


class MeasurementError(WasmkeepError):
    """The launch digest cannot be computed from what was given."""

    exit_status = EXIT_USAGE


def vcpu_types() -> dict[str, int]:
    """The vCPU models sev-snp-measure knows (QEMU's EPYC family), with the
    CPUID signature each puts in the VMSAs."""
    from sevsnpmeasure import vcpu_types as known

    return dict(known.CPU_SIGS)


@dataclass(frozen=True, slots=True)
class SnpMeasurement:
    """An expected launch digest and everything it was computed from."""

    measurement: bytes
    image: VmImage
    firmware: Path
    firmware_sha256: str
    vcpus: int
    vcpu_type: str
    vcpu_signature: int
    guest_features: int
    tool: str

    @property
    def hex(self) -> str:
        """The MEASUREMENT as a policy names it: 96 lowercase hex digits."""
        return self.measurement.hex()

    def document(self) -> dict[str, Any]:
        """The `vm measure --json` document."""
        return {
            "version": DOCUMENT_VERSION,
            "mode": "snp",
            "measurement": self.hex,
            "image": str(self.image.directory),
            "kernel": {"path": str(self.image.kernel), "sha256": self.image.kernel_sha256},
            "initrd": {"path": str(self.image.initrd), "sha256": self.image.initrd_sha256},
            "cmdline": self.image.cmdline,
            "firmware": {"path": str(self.firmware), "sha256": self.firmware_sha256},
            "vcpus": self.vcpus,
            "vcpu_type": self.vcpu_type,
            "vcpu_signature": self.vcpu_signature,
            "guest_features": self.guest_features,
            "tool": self.tool,
            "policy": {"snp": {"measurements": [self.hex]}},
        }


def measure_snp(
    image: VmImage,
    firmware: Path,
    *,
    vcpus: int = SNP_VCPUS,
    vcpu_type: str = SNP_CPU,
    guest_features: int = SNP_GUEST_FEATURES,
) -> SnpMeasurement:
    """The launch digest of `image` booted as an SEV-SNP guest on `firmware`.

    The defaults are what `wasmkeep run --backend vm` launches; others give the
    digest of another launch of the same image. FirmwareError if `firmware`
    is not an AmdSev OVMF; MeasurementError for impossible vCPUs or features.
    """
    from sevsnpmeasure.guest import calc_launch_digest
    from sevsnpmeasure.sev_mode import SevMode

    known = vcpu_types()
    if vcpu_type not in known:
        raise MeasurementError(
            f"unknown vCPU type {vcpu_type!r:.40}; sev-snp-measure knows {', '.join(known)}"
        )
    if not 1 <= vcpus <= MAX_VCPUS:
        raise MeasurementError(f"vCPUs: expected 1 to {MAX_VCPUS}, got {vcpus}")
    if not 0 <= guest_features < 1 << 64:
        raise MeasurementError("guest features: expected a 64-bit value")
    firmware = Path(firmware)
    check_firmware("snp", firmware)
    try:
        firmware_sha256 = hashlib.sha256(firmware.read_bytes()).hexdigest()
        digest = calc_launch_digest(
            SevMode.SEV_SNP,
            vcpus,
            known[vcpu_type],
            os.fspath(firmware),
            os.fspath(image.kernel),
            os.fspath(image.initrd),
            image.cmdline,
            guest_features,
        )
    except OSError as error:
        raise MeasurementError(
            f"cannot read {shown(Path(error.filename or '?'))}: {error.strerror}"
        ) from None
    except (RuntimeError, ValueError, AssertionError) as error:
        # sev-snp-measure's own checks of the firmware's tables.
        raise FirmwareError(f"sev-snp-measure cannot use {shown(firmware)}: {error}") from None
    return SnpMeasurement(
        measurement=digest,
        image=image,
        firmware=firmware,
        firmware_sha256=firmware_sha256,
        vcpus=vcpus,
        vcpu_type=vcpu_type,
        vcpu_signature=known[vcpu_type],
        guest_features=guest_features,
        tool=f"sev-snp-measure {importlib.metadata.version('sev-snp-measure')}",
    )
