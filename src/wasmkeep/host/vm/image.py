"""The VM keep's image: a Linux kernel and an initramfs holding the keep runtime.

An image is a directory:

``vmlinuz``
    a copy of the kernel (Debian's ``linux-image-amd64``: the newest
    ``/boot/vmlinuz-*``, or one given);
``initrd.img``
    the initramfs, a gzip'd cpio "newc" archive (`host/vm/cpio.py`), byte for
    byte the same whenever it is built from the same inputs;
``files.txt``
    every member of the archive, sorted: SHA-256 of its contents (of a link's
    target; ``-`` for a directory or device), mode in octal, path;
``image.json``
    what the image is made of (kernel, initrd, cmdline, Python, packages, the
    input key); written last, so a directory without it is an unfinished build.

The layout inside the initramfs is a contract with the guest (`keep/vm.py`):

- ``/init`` (0755): `INIT_SCRIPT`, which runs ``wasmkeep.keep.vm.main``;
- ``/usr/bin/python3``: this host's interpreter binary (the base one, not a
  venv's), and ``/usr/lib/python3.X/``: its standard library without tests,
  IDLE, tkinter and the like, with ``lib-dynload/``. Python is shipped
  sourceless: each module compiled to ``.pyc`` in place of its ``.py``
  (unchecked hash-based, optimisation 0, its guest path as file name; by the
  shipped interpreter in a fresh process, see `_COMPILER`). Python finds its
  prefix from ``os.pyc``: 3.11's getpath accepts ``os.py`` or ``os.pyc`` as
  the landmark under ``lib/python3.X``;
- ``/usr/lib/wasmkeep/site-packages/``: the packages the keep imports
  (`KEEP_PACKAGES`), sourceless too, with their data and shared objects;
- every shared library those ELF files need (as ``ldd`` resolves them here)
  and those loaded by name through ctypes (`CTYPES_LIBRARIES`), each at its
  path on this host: symbolic links on the way (``/lib -> usr/lib``,
  ``libseccomp.so.2 -> libseccomp.so.2.5.4``) are links in the image too;
- the TLS trust store OpenSSL looks for by default (``/usr/lib/ssl/cert.pem``
  and what it links to);
- the virtio modules the guest needs to reach its virtio-serial port on either
  machine type (`VIRTIO_MODULES` and what they depend on; none that are built
  in) at ``/lib/modules/<version>/<path>.ko``, uncompressed, listed in load
  order in ``/etc/wasmkeep/modules``; and those of `CONFIDENTIAL_MODULES` the
  kernel has, the same way, listed in ``/etc/wasmkeep/confidential-modules``
  (the guest loads each if it can: most refuse outside an SNP or TDX guest);
- ``/etc/wasmkeep/image.json``: the versions of what the image holds;
- the device nodes needed before devtmpfs is mounted (``/dev/console``: the
  kernel opens it for PID 1's stdin, stdout and stderr; ``/dev/urandom``:
  Python's hash seed, early in a boot; ``/dev/random``, ``/dev/null``), and
  the empty ``/proc /sys /tmp /run``.

The default image lives in ``$XDG_CACHE_HOME/wasmkeep/vm/<key>`` (default
``~/.cache``), where the key is a short hash of the inputs: the kernel's
digest and version, its modules.dep, the interpreter's version and digest,
every file of the wasmkeep package and the versions of the other packages.
Changing any of them gives another image; `find_or_build_image` builds it on
first use, next to where it will live, renames it into place, and keeps the
newest `CACHED_IMAGES` in the cache. Not in the key: the shared libraries and
the standard library's files (after a system upgrade of, say, libssl the old
image stays until ``--force``).

The library prints nothing: progress is reported through `Progress`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import lzma
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import wasmkeep
from wasmkeep.errors import WasmkeepError
from wasmkeep.host.vm.cpio import CpioEntry, CpioError, Member, parent_of, write_newc
from wasmkeep.printable import quote, shown

__all__ = [
    "CACHED_IMAGES",
    "CMDLINE",
    "CONFIDENTIAL_MODULES",
    "CTYPES_LIBRARIES",
    "DEFAULT_BOOT_DIR",
    "DEFAULT_MODULES_ROOT",
    "FILES_LIST",
    "IMAGE_FORMAT",
    "IMAGE_MANIFEST",
    "INITRD_FILE",
    "INIT_SCRIPT",
    "KEEP_PACKAGES",
    "KERNEL_FILE",
    "VIRTIO_MODULES",
    "KernelNotFound",
    "Progress",
    "VmImage",
    "VmImageError",
    "build_image",
    "default_image_dir",
    "find_image",
    "find_or_build_image",
]

logger = logging.getLogger(__name__)

#: The kernel command line the image is booted with: the console on the first
#: serial port, no reboot loop on panic (qemu runs with -no-reboot), little noise.
# random.trust_cpu: the guest's entropy comes from RDRAND at once (no device
# from the host needed); getrandom would otherwise wait during early boot.
CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3 random.trust_cpu=on"
#: The layout's version; a new one gives every image a new key.
IMAGE_FORMAT = 1

KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
FILES_LIST = "files.txt"
IMAGE_MANIFEST = "image.json"
_IMAGE_FILES = frozenset({KERNEL_FILE, INITRD_FILE, FILES_LIST, IMAGE_MANIFEST})
#: What a directory may hold to be replaced by a new image: an image's files,
#: finished or being written.
_REPLACEABLE = _IMAGE_FILES | {f".{name}.partial" for name in _IMAGE_FILES}

#: PID 1 of the guest (the contract with `wasmkeep.keep.vm`).
INIT_SCRIPT = (
    b"#!/usr/bin/python3 -I\n"
    b"import sys\n"
    b'sys.path.insert(0, "/usr/lib/wasmkeep/site-packages")\n'
    b"from wasmkeep.keep.vm import main\n"
    b"main()\n"
)
_GUEST_PYTHON = "/usr/bin/python3"
_GUEST_SITE = "/usr/lib/wasmkeep/site-packages"
_GUEST_MODULE_LIST = "/etc/wasmkeep/modules"
_GUEST_CONFIDENTIAL_LIST = "/etc/wasmkeep/confidential-modules"
_GUEST_MANIFEST = "/etc/wasmkeep/image.json"
#: Device nodes needed before the guest mounts devtmpfs on /dev (which hides
#: them): the kernel opens /dev/console for PID 1's stdin, stdout and stderr,
#: and Python reads its hash seed from /dev/urandom when getrandom() would
#: block, as it does this early in a boot (without it: "Fatal Python error:
#: _Py_HashRandomization_Init: failed to get random numbers").
_DEVICES = {
    "/dev/console": (0o600, (5, 1)),
    "/dev/null": (0o666, (1, 3)),
    "/dev/random": (0o666, (1, 8)),
    "/dev/urandom": (0o666, (1, 9)),
}

#: Top-level modules the keep imports, with the distribution that provides each
#: (None: wasmkeep itself); required, else the build fails.
KEEP_PACKAGES: tuple[tuple[str, str | None], ...] = (
    ("wasmkeep", None),
    ("wasmtime", "wasmtime"),
    ("cryptography", "cryptography"),
    ("pyseccomp", "pyseccomp"),
)
#: Shipped when installed: cryptography's Rust extension imports _cffi_backend.
_OPTIONAL_PACKAGES: tuple[tuple[str, str | None], ...] = (("_cffi_backend", "cffi"),)
#: Libraries the keep loads by name with ctypes, which ldd cannot see
#: (pyseccomp: libseccomp), with the Debian package that has each.
CTYPES_LIBRARIES: tuple[tuple[str, str], ...] = (("libseccomp.so.2", "libseccomp2"),)
#: Kernel modules for a virtio-serial port on microvm (virtio-mmio) and on
#: PCI machines (virtio-pci pulls in its modern and legacy helpers).
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_pci", "virtio_console")
#: Kernel modules through which an SEV-SNP or TDX guest asks for evidence:
#: configfs and the configfs-tsm report interface (Linux 6.7+; tsm_report
#: since 6.16), the guest drivers (/dev/sev-guest; /dev/tdx_guest, 6.2+).
#: Taken when the kernel has them, never required.
CONFIDENTIAL_MODULES = ("configfs", "tsm", "tsm_report", "sev_guest", "tdx_guest")

DEFAULT_BOOT_DIR = Path("/boot")
DEFAULT_MODULES_ROOT = Path("/lib/modules")

#: Standard-library directories left out: tests, IDEs and GUIs, installers,
#: other environments' packages. `_SKIPPED_ANYWHERE` at any depth.
_SKIPPED_STDLIB_DIRS = frozenset(
    {
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "venv",
        "lib-dynload",  # shipped from wherever sysconfig says it is
    }
)
_SKIPPED_ANYWHERE = frozenset({"__pycache__", "test", "tests", "idle_test"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo", ".exe", ".bat", ".ps1", ".dll", ".pdb", ".whl")
#: Extension modules left out of lib-dynload: CPython's own test modules and
#: tkinter's (whose package is left out).
_SKIPPED_EXTENSIONS = re.compile(r"(_test|_ctypes_test|_xxtestfuzz|xxlimited|_tkinter)")

_GZIP_LEVEL = 6  # level 9 takes three times as long for 0.5% less
_MAX_KERNEL = 256 << 20
_MAX_MANIFEST = 1 << 20
_SYMLINK_HOPS = 40  # as Linux's MAXSYMLINKS
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[0-9a-f]{16}")
_LEFTOVER = re.compile(r"\.[0-9a-f]{16}\.(build|old)-.+")
_ELF_MAGIC = b"\x7fELF"
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class VmImageError(WasmkeepError):
    """The keep image cannot be built or used; the message says what is wrong."""


class KernelNotFound(VmImageError):
    """No kernel to boot the VM keep with is installed."""

    hint = "apt-get install linux-image-amd64, or pass --kernel"


class Progress(Protocol):
    """How a build reports itself; the command line draws it, the library prints nothing."""

    def step(self, name: str, total: int | None) -> None:
        """A step begins; `total` is how many units it has (None: unknown)."""

    def advance(self, n: int = 1) -> None:
        """`n` more units of the current step are done."""


class _Silent:
    def step(self, name: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


# -- the image ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VmImage:
    """A built keep image, as its `image.json` describes it.

    Made only by `load` (or a build), which checks the manifest and that the
    files it names are there with their sizes; `verify` also checks digests.
    """

    directory: Path
    kernel: Path
    initrd: Path
    cmdline: str
    kernel_sha256: str
    initrd_sha256: str
    kernel_version: str
    kernel_size: int
    initrd_size: int
    file_count: int
    key: str
    python_version: str
    wasmkeep_version: str
    packages: Mapping[str, str]

    @classmethod
    def load(cls, directory: Path, *, verify: bool = False) -> VmImage:
        """The image in `directory`; `VmImageError` naming what is missing or
        wrong. With `verify`, the kernel's and initrd's SHA-256 are checked too."""
        directory = Path(directory)
        manifest_path = directory / IMAGE_MANIFEST
        try:
            with manifest_path.open("rb") as file:
                raw = file.read(_MAX_MANIFEST + 1)
        except FileNotFoundError:
            raise _damaged(
                directory, f"no {IMAGE_MANIFEST} (not an image, or unfinished)"
            ) from None
        except OSError as error:
            raise _damaged(directory, f"cannot read {IMAGE_MANIFEST}: {error.strerror}") from None
        if len(raw) > _MAX_MANIFEST:
            raise _damaged(directory, f"{IMAGE_MANIFEST} is larger than {_MAX_MANIFEST} bytes")
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise _damaged(directory, f"{IMAGE_MANIFEST} is not JSON") from None
        image = cls._from_document(directory, document)
        for path, size in ((image.kernel, image.kernel_size), (image.initrd, image.initrd_size)):
            try:
                info = path.stat()
            except OSError:
                raise _damaged(directory, f"{path.name} is missing") from None
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                raise _damaged(directory, f"{path.name} is not the {size}-byte file built")
        if not (directory / FILES_LIST).is_file():
            raise _damaged(directory, f"{FILES_LIST} is missing")
        if verify:
            image.verify()
        return image

    def verify(self) -> None:
        """Check that the kernel and the initrd have the digests recorded."""
        for path, expected in (
            (self.kernel, self.kernel_sha256),
            (self.initrd, self.initrd_sha256),
        ):
            try:
                actual = _file_sha256(path)
            except OSError as error:
                raise _damaged(
                    self.directory, f"cannot read {path.name}: {error.strerror}"
                ) from None
            if actual != expected:
                raise _damaged(self.directory, f"{path.name} does not have the SHA-256 recorded")

    @classmethod
    def _from_document(cls, directory: Path, document: object) -> VmImage:
        def fail(what: str) -> VmImageError:
            return _damaged(directory, f"{IMAGE_MANIFEST}: {what}")

        def field(container: Mapping[str, Any], name: str, kind: type, where: str = "") -> Any:
            value = container.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise fail(f"{where}{name}: expected {kind.__name__}")
            return value

        def digest(container: Mapping[str, Any], where: str) -> str:
            value = field(container, "sha256", str, where)
            if not _SHA256.fullmatch(value):
                raise fail(f"{where}sha256: expected 64 lowercase hex digits")
            return str(value)

        if not isinstance(document, dict):
            raise fail("expected an object")
        if document.get("format") != IMAGE_FORMAT:
            raise fail(f"format {quote(str(document.get('format')))}, expected {IMAGE_FORMAT}")
        kernel = field(document, "kernel", dict)
        initrd = field(document, "initrd", dict)
        python = field(document, "python", dict)
        packages = field(document, "packages", dict)
        version = field(kernel, "version", str, "kernel.")
        if not _VERSION.fullmatch(version):
            raise fail("kernel.version: not a kernel version")
        key = field(document, "key", str)
        if not _KEY.fullmatch(key):
            raise fail("key: expected 16 lowercase hex digits")
        cmdline = field(document, "cmdline", str)
        if not cmdline.isprintable():
            raise fail("cmdline: not printable")
        sizes = [
            field(part, "size", int, where)
            for part, where in ((kernel, "kernel."), (initrd, "initrd."))
        ]
        if min(sizes) < 0:
            raise fail("a negative size")
        if not all(
            isinstance(name, str) and isinstance(value, str) for name, value in packages.items()
        ):
            raise fail("packages: expected names and versions")
        return cls(
            directory=directory,
            kernel=directory / KERNEL_FILE,
            initrd=directory / INITRD_FILE,
            cmdline=cmdline,
            kernel_sha256=digest(kernel, "kernel."),
            initrd_sha256=digest(initrd, "initrd."),
            kernel_version=version,
            kernel_size=sizes[0],
            initrd_size=sizes[1],
            file_count=field(initrd, "files", int, "initrd."),
            key=key,
            python_version=field(python, "version", str, "python."),
            wasmkeep_version=field(document, "wasmkeep", str),
            packages=dict(packages),
        )


def _damaged(directory: Path, reason: str) -> VmImageError:
    return VmImageError(
        f"{shown(directory)}: not a usable keep image: {reason}",
        hint="rebuild it with `wasmkeep vm build-image --force`",
    )


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Package:
    """A top-level module the keep imports: a package directory or one file."""

    name: str
    origin: Path
    is_package: bool
    version: str


@dataclass(frozen=True)
class _Inputs:
    """Everything an image is built from, found and read once."""

    kernel: Path
    kernel_data: bytes
    kernel_version: str
    modules_dir: Path
    python: Path
    stdlib: Path
    lib_dynload: Path | None
    packages: tuple[_Package, ...]
    key: str

    @property
    def kernel_sha256(self) -> str:
        return hashlib.sha256(self.kernel_data).hexdigest()

    @property
    def package_versions(self) -> dict[str, str]:
        return {package.name: package.version for package in self.packages}


def _gather_inputs(
    kernel: Path | None,
    kernel_version: str | None,
    modules_root: Path,
    boot_dir: Path,
) -> _Inputs:
    kernel_path = Path(kernel) if kernel is not None else _newest_kernel(boot_dir)
    kernel_data = _read_kernel(kernel_path)
    version = kernel_version or _kernel_version(kernel_path, kernel_data)
    if not _VERSION.fullmatch(version) or ".." in version:
        raise VmImageError(f"kernel version {quote(version)}: not a kernel version")
    modules_dir = modules_root / version
    modules_dep = modules_dir / "modules.dep"
    try:
        modules_dep_sha256 = _file_sha256(modules_dep)
    except OSError:
        raise VmImageError(
            f"no modules for kernel {version}: cannot read {shown(modules_dep)}",
            hint="install the kernel's package (apt-get install linux-image-amd64), "
            "or name its version with --kernel-version",
        ) from None
    python = _base_python()
    stdlib, lib_dynload = _stdlib_dirs()
    packages = _find_packages()
    wasmkeep_package = packages[0]
    key_document = {
        "format": IMAGE_FORMAT,
        "cmdline": CMDLINE,
        "kernel": {"sha256": hashlib.sha256(kernel_data).hexdigest(), "version": version},
        "modules.dep": modules_dep_sha256,
        "python": {"version": sys.version, "executable": _file_sha256(python)},
        "packages": {package.name: package.version for package in packages},
        "wasmkeep_files": _files_digest(_package_files(wasmkeep_package)),
    }
    key = hashlib.sha256(json.dumps(key_document, sort_keys=True).encode()).hexdigest()[:16]
    return _Inputs(
        kernel=kernel_path,
        kernel_data=kernel_data,
        kernel_version=version,
        modules_dir=modules_dir,
        python=python,
        stdlib=stdlib,
        lib_dynload=lib_dynload,
        packages=packages,
        key=key,
    )


def _newest_kernel(boot_dir: Path) -> Path:
    try:
        candidates = [
            path
            for path in boot_dir.iterdir()
            if path.name.startswith("vmlinuz-") and not path.name.endswith(".old")
        ]
    except OSError:
        candidates = []
    candidates = [path for path in candidates if path.is_file()]
    if not candidates:
        raise KernelNotFound(f"no kernel is installed ({shown(boot_dir)}/vmlinuz-* is missing)")
    return max(candidates, key=lambda path: _version_order(path.name.removeprefix("vmlinuz-")))


def _version_order(version: str) -> tuple[tuple[int, str], ...]:
    """Sorts 6.10.0 after 6.9.0: numbers as numbers."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part)
        for part in re.split(r"(\d+)", version)
        if part
    )


def _read_kernel(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_KERNEL + 1)
    except FileNotFoundError:
        raise VmImageError(f"kernel {shown(path)}: no such file") from None
    except PermissionError:
        raise VmImageError(
            f"cannot read the kernel {shown(path)}: permission denied",
            hint="Debian installs kernels readable by root only (mode 0600): build the image "
            "as root (`sudo wasmkeep vm build-image`), or pass --kernel with a readable copy",
        ) from None
    except OSError as error:
        raise VmImageError(f"cannot read the kernel {shown(path)}: {error.strerror}") from None
    if len(data) > _MAX_KERNEL:
        raise VmImageError(f"kernel {shown(path)}: larger than {_MAX_KERNEL >> 20} MiB")
    if not data:
        raise VmImageError(f"kernel {shown(path)}: empty")
    return data


def _kernel_version(path: Path, data: bytes) -> str:
    """From the file's name (vmlinuz-<version>), else from the bzImage header."""
    if path.name.startswith("vmlinuz-") and len(path.name) > len("vmlinuz-"):
        return path.name.removeprefix("vmlinuz-")
    version = _bzimage_version(data)
    if version is None:
        raise VmImageError(
            f"kernel {shown(path)}: cannot tell its version (neither vmlinuz-<version> "
            "nor a bzImage header naming it)",
            hint="pass --kernel-version",
        )
    return version


def _bzimage_version(data: bytes) -> str | None:
    """The version string of an x86 bzImage (boot protocol: "HdrS" at 0x202,
    the kernel_version pointer at 0x20E, relative to 0x200)."""
    if data[0x202:0x206] != b"HdrS" or len(data) < 0x210:
        return None
    pointer = int.from_bytes(data[0x20E:0x210], "little")
    if pointer == 0:
        return None
    start = 0x200 + pointer
    end = data.find(b"\0", start, start + 256)
    if end < 0:
        return None
    words = data[start:end].decode("ascii", "replace").split()
    return words[0] if words else None


def _base_python() -> Path:
    """The interpreter binary under this one (a venv's python is a link to it)."""
    if sys.platlibdir != "lib":
        raise VmImageError(
            f"this Python keeps its library in {sys.platlibdir}/, the keep image in lib/"
        )
    base = getattr(sys, "_base_executable", None) or sys.executable
    python = Path(os.path.realpath(base))
    if not python.is_file():
        raise VmImageError(f"cannot find this Python's interpreter ({shown(base)})")
    return python


def _stdlib_dirs() -> tuple[Path, Path | None]:
    """The base interpreter's standard library and its lib-dynload directory."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])  # the base's, even in a venv
    if not (stdlib / "os.py").is_file():
        raise VmImageError(f"no standard library at {shown(stdlib)} (os.py is missing)")
    platstdlib = sysconfig.get_path(
        "platstdlib",
        vars={"platbase": sys.base_exec_prefix, "installed_platbase": sys.base_exec_prefix},
    )
    candidates = [os.path.join(platstdlib, "lib-dynload"), sysconfig.get_config_var("DESTSHARED")]
    candidates += [entry for entry in sys.path if entry.endswith("lib-dynload")]
    for candidate in candidates:
        if isinstance(candidate, str) and os.path.isdir(candidate):
            return stdlib, Path(candidate)
    return stdlib, None  # a Python with every extension built in


def _find_packages() -> tuple[_Package, ...]:
    packages = [_find_package(name, dist, required=True) for name, dist in KEEP_PACKAGES]
    packages += [_find_package(name, dist, required=False) for name, dist in _OPTIONAL_PACKAGES]
    return tuple(package for package in packages if package is not None)


def _find_package(name: str, distribution: str | None, *, required: bool) -> _Package | None:
    if name == "wasmkeep":
        origin = Path(wasmkeep.__file__).parent
        return _Package(name, origin, is_package=True, version=wasmkeep.__version__)
    spec = importlib.util.find_spec(name)
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        if not required:
            return None
        raise VmImageError(
            f"the keep needs the Python package {name}, which is not installed here",
            hint="install wasmkeep with its dependencies (scripts/bootstrap)",
        )
    locations = list(spec.submodule_search_locations or [])
    if locations:
        if len(locations) != 1:
            raise VmImageError(f"the Python package {name} is split over {len(locations)} places")
        origin, is_package = Path(locations[0]), True
    else:
        assert spec.origin is not None
        origin, is_package = Path(spec.origin), False
    version = "unknown"
    if distribution is not None:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            version = importlib.metadata.version(distribution)
    return _Package(name, origin, is_package=is_package, version=version)


def _package_files(package: _Package) -> list[tuple[Path, str]]:
    """A package's files to ship, (host path, path relative to site-packages), sorted."""
    if not package.is_package:
        return [(package.origin, package.origin.name)]
    return [
        (path, f"{package.name}/{relative}")
        for path, relative in _walk(package.origin, skip_dirs=frozenset(), top_skip=None)
    ]


def _walk(
    root: Path, *, skip_dirs: frozenset[str], top_skip: re.Pattern[str] | None
) -> list[tuple[Path, str]]:
    """Regular files under `root` (links to files followed), sorted, without
    caches, hidden files and `_SKIPPED_SUFFIXES`; `skip_dirs` and names matching
    `top_skip` are left out at the top, `_SKIPPED_ANYWHERE` at every depth."""
    found: list[tuple[Path, str]] = []
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        relative = here.relative_to(root)
        at_top = relative == Path(".")
        dirnames[:] = sorted(
            name
            for name in dirnames
            if name not in _SKIPPED_ANYWHERE
            and not name.startswith(".")
            and not (at_top and (name in skip_dirs or (top_skip and top_skip.fullmatch(name))))
        )
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES):
                continue
            path = here / name
            if path.is_file():
                found.append((path, (relative / name).as_posix()))
    return found


def _files_digest(files: Sequence[tuple[Path, str]]) -> str:
    digest = hashlib.sha256()
    for path, relative in files:
        digest.update(f"{relative}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- the tree inside the initramfs ----------------------------------------------------------


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def _file_mode(host_mode: int) -> int:
    """Executable or not, nothing more, from the host's mode: the image does not
    depend on a umask."""
    return stat.S_IFREG | (0o755 if host_mode & stat.S_IXUSR else 0o644)


def _follow(path: str, visit: Callable[[str, bool], str | None], too_many: str) -> str:
    """Walk the absolute `path` one name at a time from "/", following links.

    `visit(candidate, last)` looks at each step (`last`: no name follows it)
    and returns a link's target, which is spliced into the rest of the walk,
    or None to step into `candidate`. Returns where the walk ends; more than
    `_SYMLINK_HOPS` links is VmImageError(`too_many`).
    """
    pending = [part for part in path.split("/") if part]
    current = "/"
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = parent_of(current)
            continue
        candidate = _join(current, name)
        target = visit(candidate, not pending)
        if target is None:
            current = candidate
            continue
        hops += 1
        if hops > _SYMLINK_HOPS:
            raise VmImageError(too_many)
        pending = [part for part in target.split("/") if part] + pending
        if target.startswith("/"):
            current = "/"
    return current


class _Tree:
    """The initramfs being assembled: path -> entry, symbolic links included.

    Host paths are mirrored (`mirror`): each link met on the way becomes a link
    in the image and the real file lands at its real path, so a path that works
    on the host works in the guest. Guest paths (`add_file`, `add_dir`) are
    resolved through the links already in the image: add host mirrors first.
    """

    def __init__(self) -> None:
        self.entries: dict[str, CpioEntry] = {}

    def add_dir(self, path: str, mode: int = 0o755) -> str:
        real = self._real_path(path)
        existing = self.entries.get(real)
        if existing is None:
            self._put(CpioEntry(real, stat.S_IFDIR | mode))
        elif existing.is_symlink:
            return self._real_dir(real)
        elif not existing.is_dir:
            raise VmImageError(f"image: {real} is a file, not a directory")
        return real

    def add_file(
        self, path: str, *, mode: int, data: bytes | None = None, source: Path | None = None
    ) -> str:
        real = self._real_path(path)
        self._put(CpioEntry(real, mode, data=data, source=source))
        return real

    def add_device(self, path: str, mode: int, rdev: tuple[int, int]) -> str:
        real = self._real_path(path)
        self._put(CpioEntry(real, mode, rdev=rdev))
        return real

    def mirror(self, host_path: str) -> str:
        """Copy the host file at `host_path` to the same path in the image,
        with the links on the way; return its real path."""

        def visit(candidate: str, last: bool) -> str | None:
            try:
                info = os.lstat(candidate)
            except OSError as error:
                raise VmImageError(f"cannot copy {shown(host_path)}: {error.strerror}") from None
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(candidate)
                self._put(CpioEntry(candidate, stat.S_IFLNK | 0o777, data=target.encode()))
                return target
            if stat.S_ISDIR(info.st_mode):
                self._put(CpioEntry(candidate, stat.S_IFDIR | 0o755))
            elif stat.S_ISREG(info.st_mode) and last:
                self._put(CpioEntry(candidate, _file_mode(info.st_mode), source=Path(candidate)))
            else:
                raise VmImageError(f"cannot copy {shown(host_path)}: {candidate} is not a file")
            return None

        return _follow(host_path, visit, f"cannot copy {shown(host_path)}: too many links")

    def _real_path(self, path: str) -> str:
        """Where `path` lands in the image: its directory's links resolved."""
        return _join(self._real_dir(parent_of(path)), path.rsplit("/", 1)[1])

    def _real_dir(self, path: str) -> str:
        """`path` with the image's links resolved; missing directories are made."""

        def visit(candidate: str, last: bool) -> str | None:
            entry = self.entries.get(candidate)
            if entry is None:
                self._put(CpioEntry(candidate, stat.S_IFDIR | 0o755))
            elif entry.is_symlink:
                return (entry.data or b"").decode()
            elif not entry.is_dir:
                raise VmImageError(f"image: {candidate} is a file, not a directory")
            return None

        return _follow(path, visit, f"image: too many links in {path}")

    def _put(self, entry: CpioEntry) -> None:
        existing = self.entries.get(entry.path)
        if existing is None:
            parent = parent_of(entry.path)
            if parent != "/" and parent not in self.entries:
                self._real_dir(parent)
            self.entries[entry.path] = entry
        elif existing != entry and not (existing.is_dir and entry.is_dir):
            raise VmImageError(f"image: {entry.path} would be two different things")


# -- building -------------------------------------------------------------------------------


#: Compiles the modules it is given on stdin (JSON: [[source, guest path], ...])
#: as py_compile would with UNCHECKED_HASH, optimisation 0 and the guest path
#: as dfile (PEP 552: magic, flags, source hash, marshalled code), and writes
#: each .pyc to stdout after its length. It runs in a fresh interpreter because
#: marshal's output depends on the process it runs in (a string interned there
#: by anyone is written as interned, with a back-reference flag): compiled in
#: the builder's own process, the same module gives other bytes after other
#: imports, and the image would no longer be reproducible.
_COMPILER = """
import importlib.util, json, marshal, sys, warnings
warnings.simplefilter("ignore")
jobs = json.load(sys.stdin)
out = sys.stdout.buffer
for source_path, guest_path in jobs:
    with open(source_path, "rb") as file:
        source = file.read()
    try:
        code = compile(source, guest_path, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError) as error:
        sys.stderr.write(f"cannot compile {source_path}: {error}\\n")
        sys.exit(3)
    pyc = (importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
           + importlib.util.source_hash(source) + marshal.dumps(code))
    out.write(len(pyc).to_bytes(4, "little") + pyc)
    out.flush()
"""


def _compile_all(python: Path, jobs: Sequence[tuple[Path, str]], progress: Progress) -> list[bytes]:
    """The .pyc of each (source, guest path), compiled by `python` (the
    interpreter the image ships) in a fresh process with a fixed hash seed."""
    results: list[bytes] = []
    with subprocess.Popen(  # noqa: S603 - the interpreter we ship, our script, no shell
        [str(python), "-S", "-s", "-P", "-B", "-c", _COMPILER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONHASHSEED": "0"},  # and nothing else of this environment
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        # The child reads all of its input before it writes: no deadlock.
        process.stdin.write(json.dumps([[str(source), guest] for source, guest in jobs]).encode())
        process.stdin.close()
        while len(results) < len(jobs):
            length = process.stdout.read(4)
            if len(length) < 4:
                break
            results.append(process.stdout.read(int.from_bytes(length, "little")))
            progress.advance()
        error = process.stderr.read().decode(errors="replace").strip()
    if process.returncode != 0 or len(results) != len(jobs):
        raise VmImageError(error or f"compiling Python failed (status {process.returncode})")
    return results


def _python(tree: _Tree, inputs: _Inputs, progress: Progress) -> tuple[list[Path], str]:
    """The interpreter, the standard library and the keep's packages; return
    the ELF files among them (their libraries are found next) and the guest's
    stdlib directory."""
    guest_stdlib = f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
    files = [
        (path, f"{guest_stdlib}/{relative}")
        for path, relative in _walk(
            inputs.stdlib, skip_dirs=_SKIPPED_STDLIB_DIRS, top_skip=re.compile(r"config-.*")
        )
    ]
    if inputs.lib_dynload is not None:
        files += [
            (path, f"{guest_stdlib}/lib-dynload/{relative}")
            for path, relative in _walk(inputs.lib_dynload, skip_dirs=frozenset(), top_skip=None)
            if not _SKIPPED_EXTENSIONS.match(path.name)
        ]
    for package in inputs.packages:
        files += [(path, f"{_GUEST_SITE}/{relative}") for path, relative in _package_files(package)]
    sources = [(path, guest) for path, guest in files if guest.endswith(".py")]
    others = [(path, guest) for path, guest in files if not guest.endswith(".py")]
    progress.step("compiling Python", len(sources))
    tree.add_file(_GUEST_PYTHON, mode=stat.S_IFREG | 0o755, source=inputs.python)
    tree.add_dir(f"{guest_stdlib}/lib-dynload")  # exec_prefix's landmark, even if empty
    for (_, guest), pyc in zip(
        sources, _compile_all(inputs.python, sources, progress), strict=True
    ):
        tree.add_file(guest + "c", mode=stat.S_IFREG | 0o644, data=pyc)
    for path, guest in others:
        tree.add_file(guest, mode=_file_mode(path.stat().st_mode), source=path)
    candidates = [inputs.python] + [path for path, _ in others]
    return [path for path in candidates if _is_elf(path)], guest_stdlib


def _is_elf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == _ELF_MAGIC


def _libraries(tree: _Tree, elf_files: Sequence[Path], progress: Progress) -> list[str]:
    """Mirror every library the ELF files need, and the ctypes-loaded ones;
    return the libraries' host paths, sorted."""
    progress.step("finding shared libraries", None)
    search_dirs = _library_dirs()
    extra = [_locate_library(soname, package, search_dirs) for soname, package in CTYPES_LIBRARIES]
    needed = set(_ldd([*elf_files, *extra])) | {str(path) for path in extra}
    for library in sorted(needed):
        tree.mirror(library)
    progress.advance()
    return sorted(needed)


def _library_dirs() -> list[Path]:
    """Where the dynamic loader looks when there is no ld.so.cache (as in the
    guest), as Debian's glibc is built: the multiarch directories first."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    return [
        Path(f"/lib/{multiarch}"),
        Path(f"/usr/lib/{multiarch}"),
        Path("/lib64"),
        Path("/usr/lib64"),
        Path("/lib"),
        Path("/usr/lib"),
    ]


def _locate_library(soname: str, package: str, search_dirs: Sequence[Path]) -> Path:
    for directory in search_dirs:
        candidate = directory / soname
        if candidate.is_file():
            return candidate
    raise VmImageError(
        f"the keep loads {soname}, which is not installed here", hint=f"apt-get install {package}"
    )


_LDD_LINE = re.compile(r"(?P<name>\S+)(?: => (?P<path>\S+|not found))?(?: \(0x[0-9a-f]+\))?")


def _ldd(files: Sequence[Path]) -> list[str]:
    """Every library `files` need, by absolute path, as ldd resolves them here
    (the dynamic loader included)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        raise VmImageError("ldd is not installed", hint="apt-get install libc-bin")
    names = [str(path) for path in files]
    completed = subprocess.run(  # noqa: S603 - the system's ldd on files we ship, no shell
        [ldd, *names],
        capture_output=True,
        text=True,
        check=False,
        # The loader's own search, not one a variable of ours would bend.
        env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"},
    )
    return sorted(_parse_ldd(completed.stdout + completed.stderr, names))


def _parse_ldd(output: str, names: Sequence[str]) -> set[str]:
    found: set[str] = set()
    current = names[0] if len(names) == 1 else "?"
    for raw in output.splitlines():
        if not raw.startswith(("\t", " ")):
            header = raw.rstrip(":")
            if raw.endswith(":") and header in names:
                current = header
                continue
            if not raw.strip():
                continue
            raise VmImageError(f"ldd {shown(current)}: {raw.strip()}")
        line = raw.strip()
        if line in ("statically linked", "not a dynamic executable"):
            continue
        match = _LDD_LINE.fullmatch(line)
        if match is None:
            raise VmImageError(f"ldd {shown(current)}: cannot read {quote(line)}")
        path = match["path"]
        if path == "not found":
            raise VmImageError(
                f"{shown(current)} needs {match['name']}, which is not installed here"
            )
        if path is None:
            path = match["name"] if match["name"].startswith("/") else None  # the loader; vdso
        if path is not None:
            found.add(os.path.normpath(path))
    return found


def _trust_store(tree: _Tree) -> str | None:
    """OpenSSL's default CA file (``load_default_certs``), mirrored, if there is one."""
    import ssl

    default = ssl.get_default_verify_paths().openssl_cafile
    if not default or not os.path.isfile(default):
        return None
    tree.mirror(default)
    return default


@dataclass(frozen=True)
class _KernelModule:
    relative: str  # under /lib/modules/<version>/, as modules.dep names it
    source: Path

    @property
    def image_relative(self) -> str:
        """Its path in the image: uncompressed, so ``.ko``."""
        for suffix in _MODULE_SUFFIXES:
            if self.relative.endswith(suffix):
                return self.relative.removesuffix(suffix) + ".ko"
        return self.relative


def _module_name(relative: str) -> str:
    name = relative.rsplit("/", 1)[-1]
    for suffix in sorted(_MODULE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name.removesuffix(suffix)
            break
    return name.replace("-", "_")


def _resolve_modules(
    modules_dir: Path, wanted: Sequence[str], *, optional: bool = False
) -> list[_KernelModule]:
    """`wanted` and what they depend on (modules.dep), dependencies first;
    modules built into the kernel (modules.builtin) are left out, and with
    `optional` so are those the kernel does not have."""
    dependencies: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in _read_text(modules_dir / "modules.dep").splitlines():
        if not line.strip():
            continue
        module, _, rest = line.partition(":")
        for relative in (module, *rest.split()):
            if relative.startswith("/") or ".." in relative.split("/"):
                raise VmImageError(f"{shown(modules_dir)}/modules.dep: bad path {quote(relative)}")
        dependencies[module] = rest.split()
        by_name.setdefault(_module_name(module), module)
    builtin = set()
    with contextlib.suppress(FileNotFoundError):
        builtin = {
            _module_name(line.strip())
            for line in _read_text(modules_dir / "modules.builtin").splitlines()
            if line.strip()
        }
    order: list[str] = []
    visiting: set[str] = set()

    def visit(relative: str) -> None:
        if relative in order:
            return
        if relative in visiting:
            raise VmImageError(f"{shown(modules_dir)}/modules.dep: a cycle through {relative}")
        if relative not in dependencies:
            raise VmImageError(f"{shown(modules_dir)}/modules.dep: {relative} is not listed")
        visiting.add(relative)
        for dependency in dependencies[relative]:
            visit(dependency)
        visiting.discard(relative)
        order.append(relative)

    for name in wanted:
        if name in builtin or (optional and name not in by_name):
            continue
        if name not in by_name:
            raise VmImageError(
                f"kernel module {name} is neither in {shown(modules_dir)}/modules.dep nor built in",
                hint="the VM keep needs a kernel with virtio (Debian's linux-image-amd64 has it)",
            )
        visit(by_name[name])
    return [_KernelModule(relative, modules_dir / relative) for relative in order]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise
    except OSError as error:
        raise VmImageError(f"cannot read {shown(path)}: {error.strerror}") from None


def _module_bytes(module: _KernelModule) -> bytes:
    """The module's ELF object, decompressed (the guest loads it with
    finit_module and no decompression flag)."""
    try:
        data = module.source.read_bytes()
    except OSError as error:
        raise VmImageError(f"cannot read {shown(module.source)}: {error.strerror}") from None
    name = module.relative
    try:
        if name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if name.endswith(".ko.gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as error:
        raise VmImageError(f"cannot decompress {shown(module.source)}: {error}") from None
    if name.endswith(".ko.zst"):
        return _unzstd(module.source, data)
    return data


def _unzstd(path: Path, data: bytes) -> bytes:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise VmImageError(
            f"cannot decompress {shown(path)}: zstd is not installed", hint="apt-get install zstd"
        )
    completed = subprocess.run(  # noqa: S603 - the zstd found on PATH, no shell
        [zstd, "-q", "-d", "-c"], input=data, capture_output=True, check=False
    )
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip()
        raise VmImageError(f"cannot decompress {shown(path)}: {message}")
    return completed.stdout


def _modules(tree: _Tree, inputs: _Inputs, progress: Progress) -> tuple[list[str], list[str]]:
    """The guest paths of the required modules and of the confidential ones."""
    modules = _resolve_modules(inputs.modules_dir, VIRTIO_MODULES)
    required = {module.relative for module in modules}
    confidential = [
        module
        for module in _resolve_modules(inputs.modules_dir, CONFIDENTIAL_MODULES, optional=True)
        if module.relative not in required
    ]
    progress.step("adding kernel modules", len(modules) + len(confidential))
    listings: tuple[list[str], list[str]] = ([], [])
    for group, paths, listing in (
        (modules, listings[0], _GUEST_MODULE_LIST),
        (confidential, listings[1], _GUEST_CONFIDENTIAL_LIST),
    ):
        for module in group:
            guest = f"/lib/modules/{inputs.kernel_version}/{module.image_relative}"
            tree.add_file(guest, mode=stat.S_IFREG | 0o644, data=_module_bytes(module))
            paths.append(guest)
            progress.advance()
        data = "".join(f"{path}\n" for path in paths).encode()
        tree.add_file(listing, mode=stat.S_IFREG | 0o644, data=data)
    return listings


def _json_bytes(document: Mapping[str, object]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


class _HashingFile:
    """A file being written whose SHA-256 and size are kept as it grows."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self._file.write(data)
        return len(data)

    def flush(self) -> None:
        self._file.flush()


def build_image(
    output_dir: Path,
    *,
    kernel: Path | None = None,
    kernel_version: str | None = None,
    modules_root: Path = DEFAULT_MODULES_ROOT,
    boot_dir: Path = DEFAULT_BOOT_DIR,
    progress: Progress | None = None,
) -> VmImage:
    """Build a keep image into `output_dir` (made if missing) and return it.

    `kernel` defaults to the newest ``boot_dir/vmlinuz-*``; its version to the
    one in its file name (or its bzImage header); its modules are read from
    ``modules_root/<version>``. The same inputs give the same initrd, byte for
    byte. Writes in place: `find_or_build_image` is the atomic way.
    """
    return _build(
        Path(output_dir),
        _gather_inputs(kernel, kernel_version, modules_root, boot_dir),
        progress or _Silent(),
    )


def _build(output_dir: Path, inputs: _Inputs, progress: Progress) -> VmImage:
    output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (output_dir / IMAGE_MANIFEST).unlink()  # unfinished until it is written again
    tree = _Tree()
    # 1. /init, the interpreter, the standard library and the packages, sourceless.
    elf_files, guest_stdlib = _python(tree, inputs, progress)
    tree.add_file("/init", mode=stat.S_IFREG | 0o755, data=INIT_SCRIPT)
    # 2. Host paths next, so that the links they bring (/lib -> usr/lib) are in
    #    place before the guest paths below are resolved through them.
    libraries = _libraries(tree, elf_files, progress)
    trust_store = _trust_store(tree)
    # 3. The kernel modules, and what the guest is told about itself.
    modules, confidential_modules = _modules(tree, inputs, progress)
    python_version = platform.python_version()
    about = {
        "format": IMAGE_FORMAT,
        "kernel_version": inputs.kernel_version,
        "modules": modules,
        "confidential_modules": confidential_modules,
        "packages": inputs.package_versions,
        "python": {
            "version": python_version,
            "implementation": sys.implementation.name,
            "magic": importlib.util.MAGIC_NUMBER.hex(),
            "stdlib": guest_stdlib,
        },
        "wasmkeep": wasmkeep.__version__,
    }
    tree.add_file(_GUEST_MANIFEST, mode=stat.S_IFREG | 0o644, data=_json_bytes(about))
    for directory in ("/dev", "/proc", "/sys", "/run"):
        tree.add_dir(directory)
    tree.add_dir("/tmp", 0o1777)  # noqa: S108 - the guest's own /tmp
    for name, (mode, rdev) in _DEVICES.items():
        tree.add_device(name, stat.S_IFCHR | mode, rdev)
    # 4. The archive, its list of members, the kernel, and image.json last.
    entries = list(tree.entries.values())
    sizes = {
        entry.path: entry.source.stat().st_size if entry.source else len(entry.data or b"")
        for entry in entries
    }
    progress.step("writing the initramfs", sum(sizes.values()))
    members: list[Member] = []

    def on_member(member: Member) -> None:
        members.append(member)
        progress.advance(member.size)

    initrd_path = output_dir / INITRD_FILE
    partial = output_dir / f".{INITRD_FILE}.partial"
    try:
        with partial.open("wb") as raw:
            hashing = _HashingFile(raw)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=hashing, compresslevel=_GZIP_LEVEL, mtime=0
            ) as compressed:
                uncompressed = write_newc(entries, compressed, on_member=on_member)
        os.replace(partial, initrd_path)
    except CpioError as error:
        raise VmImageError(f"cannot write the initramfs: {error}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    progress.step("writing the image", None)
    (output_dir / KERNEL_FILE).write_bytes(inputs.kernel_data)
    (output_dir / FILES_LIST).write_text(_files_list(members), encoding="utf-8")
    document = {
        "format": IMAGE_FORMAT,
        "builder": f"wasmkeep {wasmkeep.__version__} (image format {IMAGE_FORMAT})",
        "key": inputs.key,
        "cmdline": CMDLINE,
        "kernel": {
            "file": KERNEL_FILE,
            "source": str(inputs.kernel),
            "version": inputs.kernel_version,
            "sha256": inputs.kernel_sha256,
            "size": len(inputs.kernel_data),
        },
        "initrd": {
            "file": INITRD_FILE,
            "sha256": hashing.sha256.hexdigest(),
            "size": hashing.size,
            "uncompressed_size": uncompressed,
            "files": sum(1 for member in members if member.entry.is_file),
            "members": len(members),
        },
        "python": {"version": python_version, "executable": str(inputs.python)},
        "wasmkeep": wasmkeep.__version__,
        "packages": inputs.package_versions,
        "modules": modules,
        "confidential_modules": confidential_modules,
        "libraries": libraries,
        "trust_store": trust_store,
    }
    manifest = output_dir / IMAGE_MANIFEST
    partial_manifest = output_dir / f".{IMAGE_MANIFEST}.partial"
    partial_manifest.write_bytes(_json_bytes(document))
    os.replace(partial_manifest, manifest)
    progress.advance()
    return VmImage.load(output_dir)


def _files_list(members: Sequence[Member]) -> str:
    lines = []
    for member in sorted(members, key=lambda member: member.entry.path.encode()):
        entry = member.entry
        digest = member.sha256 if entry.is_file or entry.is_symlink else "-"
        lines.append(f"{digest} {entry.mode:06o} {entry.path}\n")
    return "".join(lines)


# -- the cache ------------------------------------------------------------------------------


def _cache_home(cache_home: Path | None) -> Path:
    if cache_home is not None:
        return Path(cache_home)
    configured = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative path is invalid and to be ignored.
    return Path(configured) if os.path.isabs(configured) else Path.home() / ".cache"


def default_image_dir(
    *,
    kernel: Path | None = None,
    kernel_version: str | None = None,
    modules_root: Path = DEFAULT_MODULES_ROOT,
    boot_dir: Path = DEFAULT_BOOT_DIR,
    cache_home: Path | None = None,
) -> Path:
    """Where the image for these inputs lives: ``$XDG_CACHE_HOME/wasmkeep/vm/<key>``."""
    inputs = _gather_inputs(kernel, kernel_version, modules_root, boot_dir)
    return _image_dir(inputs, cache_home)


def _image_dir(inputs: _Inputs, cache_home: Path | None) -> Path:
    return _cache_home(cache_home) / "wasmkeep" / "vm" / inputs.key


def find_image(
    directory: Path | None = None,
    *,
    kernel: Path | None = None,
    kernel_version: str | None = None,
    modules_root: Path = DEFAULT_MODULES_ROOT,
    boot_dir: Path = DEFAULT_BOOT_DIR,
    cache_home: Path | None = None,
) -> VmImage | None:
    """The image built from the current inputs in `directory` (default: the
    cache's), checked down to its digests; None if there is none, or it is
    damaged or out of date."""
    inputs = _gather_inputs(kernel, kernel_version, modules_root, boot_dir)
    return _current_image(Path(directory) if directory else _image_dir(inputs, cache_home), inputs)


def _current_image(directory: Path, inputs: _Inputs) -> VmImage | None:
    try:
        image = VmImage.load(directory, verify=True)
    except VmImageError as error:
        if directory.exists():
            logger.debug("rebuilding the keep image: %s", error)
        return None
    if image.key != inputs.key:
        logger.debug("rebuilding the keep image %s: its inputs changed", directory)
        return None
    return image


def find_or_build_image(
    directory: Path | None = None,
    *,
    kernel: Path | None = None,
    kernel_version: str | None = None,
    modules_root: Path = DEFAULT_MODULES_ROOT,
    boot_dir: Path = DEFAULT_BOOT_DIR,
    cache_home: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> VmImage:
    """The image for the current inputs in `directory` (default: the cache's),
    built first if it is missing, damaged, out of date, or `force` says so.

    The build goes into a new directory beside `directory` and is renamed into
    place when complete, under a lock, so a reader never sees half an image
    and two builders do not both build. An existing `directory` is replaced
    only if it holds nothing but an image's files.
    """
    inputs = _gather_inputs(kernel, kernel_version, modules_root, boot_dir)
    target = Path(directory) if directory else _image_dir(inputs, cache_home)
    if not force and (image := _current_image(target, inputs)) is not None:
        return image
    _check_replaceable(target)
    parent = target.parent
    if directory is None:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent / f".{target.name}.lock"):
        if not force and (image := _current_image(target, inputs)) is not None:
            return image  # another process built it while we waited
        _check_replaceable(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=parent))
        try:
            os.chmod(staging, 0o755)  # noqa: S103 - as any directory: readable, not writable
            _build(staging, inputs, progress or _Silent())
            _replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if directory is None:
        _prune_cache(parent, keep=target.name)
    return VmImage.load(target)


#: Images kept in the cache: each change to wasmkeep's source makes a new one
#: (about 50 MB), and the newest few are the ones still in use.
CACHED_IMAGES = 3


def _prune_cache(cache: Path, keep: str) -> None:
    """Remove all but the newest `CACHED_IMAGES` images from the cache (never
    `keep`, never one another process holds the lock of)."""
    try:
        entries = list(os.scandir(cache))
        images = [entry for entry in entries if _KEY.fullmatch(entry.name)]
        images.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
        # What a build killed on the way left behind (a live one is younger).
        leftovers = [
            entry
            for entry in entries
            if _LEFTOVER.fullmatch(entry.name) and entry.stat().st_mtime < time.time() - 3600
        ]
    except OSError:
        return
    for leftover in leftovers:
        shutil.rmtree(leftover.path, ignore_errors=True)
    for entry in images[CACHED_IMAGES:]:
        if entry.name == keep:
            continue
        lock = cache / f".{entry.name}.lock"
        with contextlib.suppress(OSError, VmImageError), _locked(lock, wait=False) as held:
            if held:
                shutil.rmtree(entry.path, ignore_errors=True)
                lock.unlink()


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file `path`; without `wait`, yield False if it is held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise VmImageError(f"cannot lock {shown(path)}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _check_replaceable(target: Path) -> None:
    try:
        names = {entry.name for entry in os.scandir(target)}
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise VmImageError(f"{shown(target)} exists and is not a directory") from None
    except OSError as error:
        raise VmImageError(f"cannot read {shown(target)}: {error.strerror}") from None
    foreign = sorted(names - _REPLACEABLE)
    if foreign:
        raise VmImageError(
            f"{shown(target)} is not a keep image (it holds {quote(foreign[0])}); not replacing it",
            hint="choose another directory",
        )


def _replace(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`, moving an old `target` out of the way first."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "image")
    try:
        os.rename(staging, target)
    except OSError as error:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old / "image", target)
        raise VmImageError(
            f"cannot move the image into {shown(target)}: {error.strerror}"
        ) from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
