"""The VM keep's image: the cpio writer, reproducibility, the layout the guest
relies on, the cache, and a real image whose interpreter runs in a chroot.

Most tests build with a small fake kernel and a fake /lib/modules tree (the
Python side is real: it is what the guest runs); one builds from the Debian
kernel installed here and runs the image's Python with nothing but the image.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import lzma
import marshal
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import wasmkeep
from tests.conftest import run_wasmkeep
from wasmkeep.host.vm import image as vm_image
from wasmkeep.host.vm.cpio import CpioEntry, CpioError, write_newc
from wasmkeep.host.vm.image import (
    CMDLINE,
    INIT_SCRIPT,
    KernelNotFound,
    VmImage,
    VmImageError,
    build_image,
    default_image_dir,
    find_image,
    find_or_build_image,
)

FAKE_VERSION = "9.9.9-fake"
GUEST_STDLIB = f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
SITE = "/usr/lib/wasmkeep/site-packages"


# -- a reader, to check what the writer wrote -----------------------------------------------


@dataclass(frozen=True)
class Parsed:
    name: str
    inode: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes

    @property
    def path(self) -> str:
        return "/" + self.name


def _align(offset: int) -> int:
    return offset + (-offset % 4)


def read_newc(data: bytes) -> list[Parsed]:
    """Parse a "newc" archive strictly: magic, padding, trailer, nothing after."""
    members = []
    offset = 0
    while True:
        assert data[offset : offset + 6] == b"070701", f"bad magic at {offset}"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        inode, mode, uid, gid, nlink, mtime, size, _, _, rmajor, rminor, namesize, check = fields
        assert check == 0
        name_start = offset + 110
        assert data[name_start + namesize - 1] == 0
        name = data[name_start : name_start + namesize - 1].decode()
        data_start = _align(name_start + namesize)
        assert not data[name_start + namesize : data_start].strip(b"\0")
        body = data[data_start : data_start + size]
        assert len(body) == size
        offset = _align(data_start + size)
        if name == "TRAILER!!!":
            break
        members.append(Parsed(name, inode, mode, uid, gid, nlink, mtime, (rmajor, rminor), body))
    assert offset == len(data), "bytes after the trailer"
    return members


def read_initrd(path: Path) -> list[Parsed]:
    return read_newc(gzip.decompress(path.read_bytes()))


class Tree:
    """An archive's members by path, and lookups that follow its links."""

    def __init__(self, members: list[Parsed]) -> None:
        self.members = {member.path: member for member in members}

    def lookup(self, path: str) -> Parsed:
        current = "/"
        pending = [part for part in path.split("/") if part]
        for _ in range(100):
            if not pending:
                return self.members[current]
            name = pending.pop(0)
            candidate = f"{current.rstrip('/')}/{name}"
            member = self.members.get(candidate)
            if member is None:
                raise KeyError(path)
            if stat.S_ISLNK(member.mode):
                target = member.data.decode()
                pending = [part for part in target.split("/") if part] + pending
                current = "/" if target.startswith("/") else current
                continue
            current = candidate
        raise AssertionError(f"a link loop at {path}")

    def __contains__(self, path: str) -> bool:
        try:
            self.lookup(path)
        except KeyError:
            return False
        return True


def extract(members: list[Parsed], root: Path) -> None:
    """Unpack onto `root` as the kernel would (device nodes left out)."""
    for member in members:
        target = root / member.name
        kind = stat.S_IFMT(member.mode)
        if kind == stat.S_IFDIR:
            target.mkdir(exist_ok=True)
            os.chmod(target, stat.S_IMODE(member.mode))
        elif kind == stat.S_IFREG:
            target.write_bytes(member.data)
            os.chmod(target, stat.S_IMODE(member.mode))
        elif kind == stat.S_IFLNK:
            os.symlink(member.data.decode(), target)


# -- fakes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeKernel:
    kernel: Path
    modules_root: Path
    boot: Path


def make_fake_kernel(root: Path) -> FakeKernel:
    """A kernel file and a modules tree shaped like Debian's: one module
    xz-compressed, virtio_console built in, one module nobody needs."""
    boot = root / "boot"
    boot.mkdir()
    kernel = boot / f"vmlinuz-{FAKE_VERSION}"
    kernel.write_bytes(b"not really a kernel\n" * 1000)
    modules = root / "modules" / FAKE_VERSION
    virtio = modules / "kernel" / "drivers" / "virtio"
    virtio.mkdir(parents=True)
    (modules / "kernel" / "drivers" / "net").mkdir()
    for name in ("virtio_ring", "virtio_mmio", "virtio_pci", "virtio_pci_modern_dev"):
        (virtio / f"{name}.ko").write_bytes(b"\x7fELF fake " + name.encode())
    (virtio / "virtio_pci_legacy_dev.ko").write_bytes(b"\x7fELF fake virtio_pci_legacy_dev")
    (virtio / "virtio.ko.xz").write_bytes(lzma.compress(b"\x7fELF fake virtio"))
    (modules / "kernel" / "drivers" / "net" / "virtio_net.ko").write_bytes(b"\x7fELF unused")
    d = "kernel/drivers/virtio"
    (modules / "modules.dep").write_text(
        f"{d}/virtio_ring.ko:\n"
        f"{d}/virtio.ko.xz: {d}/virtio_ring.ko\n"
        f"{d}/virtio_mmio.ko: {d}/virtio.ko.xz {d}/virtio_ring.ko\n"
        f"{d}/virtio_pci_modern_dev.ko:\n"
        f"{d}/virtio_pci_legacy_dev.ko:\n"
        f"{d}/virtio_pci.ko: {d}/virtio_pci_legacy_dev.ko {d}/virtio_pci_modern_dev.ko "
        f"{d}/virtio.ko.xz {d}/virtio_ring.ko\n"
        f"kernel/drivers/net/virtio_net.ko: {d}/virtio.ko.xz {d}/virtio_ring.ko\n"
    )
    (modules / "modules.builtin").write_text("kernel/drivers/char/virtio_console.ko\n")
    return FakeKernel(kernel=kernel, modules_root=root / "modules", boot=boot)


EXPECTED_MODULES = [
    f"/lib/modules/{FAKE_VERSION}/kernel/drivers/virtio/{name}.ko"
    for name in (
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
    )
]


class RecordingProgress:
    def __init__(self) -> None:
        self.steps: list[tuple[str, int | None]] = []
        self.advanced: dict[str, int] = {}

    def step(self, name: str, total: int | None) -> None:
        self.steps.append((name, total))
        self.advanced[name] = 0

    def advance(self, n: int = 1) -> None:
        self.advanced[self.steps[-1][0]] += n


@dataclass(frozen=True)
class Built:
    fake: FakeKernel
    image: VmImage
    progress: RecordingProgress
    members: list[Parsed]
    tree: Tree


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("vm-image")
    fake = make_fake_kernel(root)
    progress = RecordingProgress()
    image = build_image(
        root / "image", kernel=fake.kernel, modules_root=fake.modules_root, progress=progress
    )
    members = read_initrd(image.initrd)
    return Built(fake, image, progress, members, Tree(members))


# -- the cpio writer ------------------------------------------------------------------------


def test_cpio_writer_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "payload"
    source.write_bytes(b"from a file, 21 bytes")
    entries = [
        CpioEntry("/etc/hostname", stat.S_IFREG | 0o644, data=b"keep\n"),
        CpioEntry("/etc", stat.S_IFDIR | 0o755),
        CpioEntry("/bin", stat.S_IFDIR | 0o755),
        CpioEntry("/bin/payload", stat.S_IFREG | 0o755, source=source),
        CpioEntry("/lib", stat.S_IFLNK | 0o777, data=b"usr/lib"),
        CpioEntry("/etc/ssl", stat.S_IFDIR | 0o755),
        CpioEntry("/dev", stat.S_IFDIR | 0o755),
        CpioEntry("/dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    ]
    first = _write(entries)
    assert _write(list(reversed(entries))) == first  # the order given does not matter
    members = read_newc(first)
    assert [member.path for member in members] == [
        "/bin",
        "/bin/payload",
        "/dev",
        "/dev/console",
        "/etc",
        "/etc/hostname",
        "/etc/ssl",
        "/lib",
    ]
    assert [member.inode for member in members] == list(range(1, 9))
    assert {(member.uid, member.gid, member.mtime) for member in members} == {(0, 0, 0)}
    by_path = {member.path: member for member in members}
    assert by_path["/bin/payload"].data == b"from a file, 21 bytes"
    assert by_path["/bin/payload"].mode == stat.S_IFREG | 0o755
    assert by_path["/etc/hostname"].data == b"keep\n"
    assert by_path["/lib"].data == b"usr/lib"
    assert stat.S_ISLNK(by_path["/lib"].mode)
    assert by_path["/dev/console"].rdev == (5, 1)
    assert by_path["/etc"].nlink == 3  # itself, "..", and the subdirectory ssl
    assert by_path["/bin"].nlink == 2
    assert by_path["/bin/payload"].nlink == 1  # never taken for a hard link


def _write(entries: list[CpioEntry]) -> bytes:
    import io

    out = io.BytesIO()
    length = write_newc(entries, out)
    assert length == len(out.getvalue())
    return out.getvalue()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_gnu_cpio_reads_the_archive(tmp_path: Path) -> None:
    entries = [
        CpioEntry("/a", stat.S_IFDIR | 0o755),
        CpioEntry("/a/b", stat.S_IFREG | 0o644, data=b"x" * 5),
        CpioEntry("/a/c", stat.S_IFLNK | 0o777, data=b"b"),
    ]
    archive = tmp_path / "test.cpio"
    archive.write_bytes(_write(entries))
    listed = subprocess.run(
        ["cpio", "-t", "--quiet", "-F", str(archive)], capture_output=True, text=True, check=True
    )
    assert listed.stdout.split() == ["a", "a/b", "a/c"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([CpioEntry("/a/b", stat.S_IFREG | 0o644, data=b"")], "parent /a is not a directory"),
        (
            [
                CpioEntry("/a", stat.S_IFREG | 0o644, data=b""),
                CpioEntry("/a/b", stat.S_IFREG | 0o644, data=b""),
            ],
            "parent /a is not a directory",
        ),
        (
            [CpioEntry("/a", stat.S_IFDIR | 0o755), CpioEntry("/a", stat.S_IFDIR | 0o700)],
            "twice",
        ),
    ],
)
def test_cpio_writer_refuses_a_broken_tree(entries: list[CpioEntry], message: str) -> None:
    with pytest.raises(CpioError, match=message):
        _write(entries)


@pytest.mark.parametrize("path", ["a", "/", "/a/../b", "/a//b", "/a/", "/a/./b"])
def test_cpio_entry_needs_a_normal_absolute_path(path: str) -> None:
    with pytest.raises(CpioError, match="not a normal absolute path"):
        CpioEntry(path, stat.S_IFDIR | 0o755)


def test_cpio_entry_contents_match_its_type(tmp_path: Path) -> None:
    with pytest.raises(CpioError, match="exactly one"):
        CpioEntry("/f", stat.S_IFREG | 0o644)
    with pytest.raises(CpioError, match="exactly one"):
        CpioEntry("/f", stat.S_IFREG | 0o644, data=b"", source=tmp_path)
    with pytest.raises(CpioError, match="target"):
        CpioEntry("/l", stat.S_IFLNK | 0o777)
    with pytest.raises(CpioError, match="only files"):
        CpioEntry("/d", stat.S_IFDIR | 0o755, data=b"x")
    with pytest.raises(CpioError, match="unsupported"):
        CpioEntry("/p", stat.S_IFIFO | 0o644)


def test_cpio_writer_notices_a_file_that_changed(tmp_path: Path) -> None:
    source = tmp_path / "growing"
    source.write_bytes(b"1234")
    entry = CpioEntry("/f", stat.S_IFREG | 0o644, source=source)

    class Grows:
        def __init__(self) -> None:
            self.calls = 0

        def write(self, data: bytes, /) -> int:
            self.calls += 1
            if self.calls == 1:  # after the header, before the data
                source.write_bytes(b"12345678")
            return len(data)

    with pytest.raises(CpioError, match="changed while it was archived"):
        write_newc([entry], Grows())


# -- reproducibility ------------------------------------------------------------------------


def test_two_builds_are_byte_identical(built: Built, tmp_path: Path) -> None:
    # The second build in another process with another hash seed: nothing of
    # the builder's own state may reach the archive.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from wasmkeep.host.vm.image import build_image\n"
        "build_image(Path(sys.argv[1]), kernel=Path(sys.argv[2]), modules_root=Path(sys.argv[3]))\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path / "again"),
            str(built.fake.kernel),
            str(built.fake.modules_root),
        ],
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        check=True,
        timeout=300,
    )
    again = VmImage.load(tmp_path / "again", verify=True)
    assert again.initrd_sha256 == built.image.initrd_sha256
    assert again.initrd.read_bytes() == built.image.initrd.read_bytes()
    assert (tmp_path / "again" / "files.txt").read_bytes() == (
        built.image.directory / "files.txt"
    ).read_bytes()
    assert again.key == built.image.key


def test_the_gzip_header_names_no_file_and_no_time(built: Built) -> None:
    header = built.image.initrd.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] == 0  # FLG: no FNAME, no FCOMMENT, no FEXTRA
    assert header[4:8] == b"\0\0\0\0"  # MTIME


def test_every_member_is_owned_by_root_at_time_zero(built: Built) -> None:
    assert {(member.uid, member.gid, member.mtime) for member in built.members} == {(0, 0, 0)}
    assert [member.inode for member in built.members] == list(range(1, len(built.members) + 1))
    names = [member.name.encode() for member in built.members]
    assert names == sorted(names)


# -- the layout contract --------------------------------------------------------------------


def test_init_is_exactly_the_contract(built: Built) -> None:
    init = built.tree.members["/init"]
    assert init.mode == stat.S_IFREG | 0o755
    assert init.data == (
        b"#!/usr/bin/python3 -I\nimport sys\n"
        b'sys.path.insert(0, "/usr/lib/wasmkeep/site-packages")\n'
        b"from wasmkeep.keep.vm import main\nmain()\n"
    )
    assert init.data == INIT_SCRIPT


def test_the_interpreter_is_the_base_python(built: Built) -> None:
    python = built.tree.lookup("/usr/bin/python3")
    assert python.mode == stat.S_IFREG | 0o755
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    assert python.data == Path(base).read_bytes()


def test_python_is_sourceless(built: Built) -> None:
    paths = list(built.tree.members)
    assert not [path for path in paths if path.endswith(".py")]
    assert not [path for path in paths if "__pycache__" in path]
    for landmark in ("os.pyc", "encodings/__init__.pyc", "encodings/idna.pyc", "ssl.pyc"):
        assert f"{GUEST_STDLIB}/{landmark}" in built.tree
    assert stat.S_ISDIR(built.tree.lookup(f"{GUEST_STDLIB}/lib-dynload").mode)
    for left_out in (
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "venv",
        "unittest/test",
    ):
        assert f"{GUEST_STDLIB}/{left_out}" not in built.tree, left_out
    assert not [path for path in paths if path.startswith(f"{GUEST_STDLIB}/config-")]
    assert not [path for path in paths if path.endswith((".exe", ".bat"))]


def test_pyc_files_are_unchecked_hash_based_with_guest_paths(built: Built) -> None:
    for path in (f"{GUEST_STDLIB}/os.pyc", f"{SITE}/wasmkeep/keep/runtime.pyc"):
        data = built.tree.lookup(path).data
        assert data[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(data[4:8], "little") == 0b01  # hash-based, unchecked
        code = marshal.loads(data[16:])
        assert code.co_filename == path[:-1]  # the .py it came from, as the guest names it
    source = Path(wasmkeep.__file__).parent / "keep" / "runtime.py"
    data = built.tree.lookup(f"{SITE}/wasmkeep/keep/runtime.pyc").data
    assert data[8:16] == importlib.util.source_hash(source.read_bytes())


def test_lib_dynload_ships_extensions_but_not_test_ones(built: Built) -> None:
    dynload = f"{GUEST_STDLIB}/lib-dynload/"
    names = {path.removeprefix(dynload) for path in built.tree.members if path.startswith(dynload)}
    if not names:
        pytest.skip("this Python has its extensions built in")
    assert any(name.startswith("_ssl.") for name in names) or "_ssl" in sys.builtin_module_names
    assert not [name for name in names if name.startswith(("_test", "_tkinter", "xxlimited"))]


def test_the_keep_packages_are_there(built: Built) -> None:
    tree = built.tree
    for path in (
        f"{SITE}/wasmkeep/__init__.pyc",
        f"{SITE}/wasmkeep/keep/vm.pyc",
        f"{SITE}/wasmkeep/keep/session.pyc",
        f"{SITE}/wasmtime/__init__.pyc",
        f"{SITE}/cryptography/__init__.pyc",
        f"{SITE}/cryptography/hazmat/bindings/_rust.abi3.so",
        f"{SITE}/pyseccomp.pyc",
    ):
        assert path in tree, path
    # Data files come along (the pinned attestation roots, wasmtime's library).
    data_dir = Path(wasmkeep.__file__).parent / "attestation" / "data"
    for host in sorted(path for path in data_dir.rglob("*") if path.is_file()):
        relative = host.relative_to(Path(wasmkeep.__file__).parent).as_posix()
        assert tree.lookup(f"{SITE}/wasmkeep/{relative}").data == host.read_bytes()
    wasmtime_spec = importlib.util.find_spec("wasmtime")
    assert wasmtime_spec is not None and wasmtime_spec.origin is not None
    wasmtime_dir = Path(wasmtime_spec.origin).parent
    libraries = [path for path in wasmtime_dir.rglob("*.so") if "__pycache__" not in path.parts]
    assert libraries
    for library in libraries:
        assert f"{SITE}/wasmtime/{library.relative_to(wasmtime_dir).as_posix()}" in tree


def test_every_library_needed_is_at_its_host_path(built: Built) -> None:
    manifest = json.loads((built.image.directory / "image.json").read_text())
    libraries = manifest["libraries"]
    assert any(Path(path).name == "libc.so.6" for path in libraries)
    assert any(Path(path).name.startswith("ld-linux") for path in libraries)
    assert any(Path(path).name == "libseccomp.so.2" for path in libraries)
    for path in libraries:
        member = built.tree.lookup(path)  # through the image's own links
        assert stat.S_ISREG(member.mode)
        assert member.data == Path(path).read_bytes(), path
    # The loader named in the interpreter's ELF header, as the guest's kernel will look it up.
    assert "/lib64/ld-linux-x86-64.so.2" in built.tree or sys.maxsize < 2**32


def test_the_trust_store_is_where_openssl_looks(built: Built) -> None:
    import ssl

    default = ssl.get_default_verify_paths().openssl_cafile
    if not os.path.isfile(default):
        pytest.skip(f"no CA file at {default} here")
    assert built.tree.lookup(default).data == Path(default).read_bytes()


def test_kernel_modules_in_dependency_order_and_uncompressed(built: Built) -> None:
    listing = built.tree.lookup("/etc/wasmkeep/modules").data.decode()
    assert listing.splitlines() == EXPECTED_MODULES
    assert built.tree.lookup(EXPECTED_MODULES[1]).data == b"\x7fELF fake virtio"  # was .ko.xz
    for path in EXPECTED_MODULES:
        assert built.tree.lookup(path).data.startswith(b"\x7fELF")
    assert not [path for path in built.tree.members if "virtio_net" in path]


def test_the_guest_is_told_what_it_holds(built: Built) -> None:
    about = json.loads(built.tree.lookup("/etc/wasmkeep/image.json").data)
    assert about["kernel_version"] == FAKE_VERSION
    assert about["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert about["wasmkeep"] == wasmkeep.__version__
    assert set(about["packages"]) >= {"wasmkeep", "wasmtime", "cryptography", "pyseccomp"}
    assert about["modules"] == EXPECTED_MODULES


def test_directories_and_devices(built: Built) -> None:
    for directory in ("/dev", "/proc", "/sys", "/tmp", "/run"):
        assert stat.S_ISDIR(built.tree.lookup(directory).mode), directory
    assert stat.S_IMODE(built.tree.lookup("/tmp").mode) == 0o1777
    console = built.tree.lookup("/dev/console")
    assert stat.S_ISCHR(console.mode)
    assert console.rdev == (5, 1)
    assert built.tree.lookup("/dev/urandom").rdev == (1, 9)
    assert not [path for path in built.tree.members if path.startswith(("/proc/", "/sys/"))]


def test_files_list_is_the_archive(built: Built) -> None:
    lines = (built.image.directory / "files.txt").read_text().splitlines()
    expected = []
    for member in built.members:
        if stat.S_ISREG(member.mode) or stat.S_ISLNK(member.mode):
            digest = hashlib.sha256(member.data).hexdigest()
        else:
            digest = "-"
        expected.append(f"{digest} {member.mode:06o} {member.path}")
    assert lines == expected


def test_image_json_describes_the_files(built: Built) -> None:
    image = built.image
    manifest = json.loads((image.directory / "image.json").read_text())
    assert manifest["cmdline"] == CMDLINE == image.cmdline
    assert image.kernel == image.directory / "vmlinuz"
    assert image.initrd == image.directory / "initrd.img"
    assert image.kernel.read_bytes() == built.fake.kernel.read_bytes()
    assert image.kernel_sha256 == hashlib.sha256(image.kernel.read_bytes()).hexdigest()
    assert image.initrd_sha256 == hashlib.sha256(image.initrd.read_bytes()).hexdigest()
    assert image.kernel_version == FAKE_VERSION
    assert manifest["initrd"]["files"] == image.file_count
    assert image.file_count == sum(1 for member in built.members if stat.S_ISREG(member.mode))
    assert manifest["initrd"]["members"] == len(built.members)
    assert image.packages["wasmtime"] == manifest["packages"]["wasmtime"]
    assert image.python_version == ".".join(map(str, sys.version_info[:3]))
    assert VmImage.load(image.directory, verify=True) == image


def test_progress_reports_every_step(built: Built) -> None:
    names = [name for name, _ in built.progress.steps]
    assert names == [
        "compiling Python",
        "finding shared libraries",
        "adding kernel modules",
        "writing the initramfs",
        "writing the image",
    ]
    for name, total in built.progress.steps:
        if total is not None:
            assert built.progress.advanced[name] == total, name


# -- errors ---------------------------------------------------------------------------------


def test_no_kernel_installed(tmp_path: Path) -> None:
    empty_boot = tmp_path / "boot"
    empty_boot.mkdir()
    with pytest.raises(KernelNotFound) as caught:
        build_image(tmp_path / "image", boot_dir=empty_boot, modules_root=tmp_path)
    text = caught.value.diagnostics()
    assert "no kernel is installed" in text
    assert "apt-get install linux-image-amd64" in text
    assert isinstance(caught.value, wasmkeep.errors.WasmkeepError)
    assert not (tmp_path / "image").exists()


def test_a_kernel_without_modules(tmp_path: Path) -> None:
    fake = make_fake_kernel(tmp_path)
    with pytest.raises(VmImageError, match=r"no modules for kernel 1\.2\.3") as caught:
        build_image(
            tmp_path / "image",
            kernel=fake.kernel,
            kernel_version="1.2.3",
            modules_root=fake.modules_root,
        )
    assert "--kernel-version" in caught.value.diagnostics()


def test_a_kernel_whose_version_cannot_be_told(tmp_path: Path) -> None:
    fake = make_fake_kernel(tmp_path)
    renamed = tmp_path / "bzImage"
    shutil.copy(fake.kernel, renamed)
    with pytest.raises(VmImageError, match="cannot tell its version") as caught:
        default_image_dir(kernel=renamed, modules_root=fake.modules_root)
    assert "--kernel-version" in caught.value.diagnostics()


def test_the_version_comes_from_a_bzimage_header(tmp_path: Path) -> None:
    fake = make_fake_kernel(tmp_path)
    header = bytearray(0x400)
    header[0x202:0x206] = b"HdrS"
    header[0x20E:0x210] = (0x100).to_bytes(2, "little")
    header[0x300 : 0x300 + 40] = f"{FAKE_VERSION} (builder@example) #1 SMP\0".encode().ljust(40)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bytes(header))
    directory = default_image_dir(
        kernel=kernel, modules_root=fake.modules_root, cache_home=tmp_path
    )
    assert directory.parent == tmp_path / "wasmkeep" / "vm"


def test_a_missing_named_kernel(tmp_path: Path) -> None:
    with pytest.raises(VmImageError, match="no such file"):
        build_image(tmp_path / "image", kernel=tmp_path / "vmlinuz-1.0", modules_root=tmp_path)


def test_a_module_that_is_neither_listed_nor_built_in(tmp_path: Path) -> None:
    fake = make_fake_kernel(tmp_path)
    builtin = fake.modules_root / FAKE_VERSION / "modules.builtin"
    builtin.write_text("")
    with pytest.raises(VmImageError, match="virtio_console is neither"):
        vm_image._resolve_modules(fake.modules_root / FAKE_VERSION, vm_image.VIRTIO_MODULES)


def test_zstd_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "virtio.ko.zst"
    module = vm_image._KernelModule("kernel/drivers/virtio/virtio.ko.zst", source)
    assert module.image_relative == "kernel/drivers/virtio/virtio.ko"
    if shutil.which("zstd"):
        subprocess.run(
            ["zstd", "-q", "-o", str(source)], input=b"\x7fELF zstd", check=True, timeout=30
        )
        assert vm_image._module_bytes(module) == b"\x7fELF zstd"
    else:
        source.write_bytes(b"whatever")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(VmImageError, match="zstd is not installed"):
        vm_image._module_bytes(module)


# -- the cache ------------------------------------------------------------------------------


def test_default_image_dir_follows_xdg_and_the_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = make_fake_kernel(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    directory = default_image_dir(kernel=fake.kernel, modules_root=fake.modules_root)
    assert directory.parent == tmp_path / "cache" / "wasmkeep" / "vm"
    assert len(directory.name) == 16
    assert default_image_dir(kernel=fake.kernel, modules_root=fake.modules_root) == directory
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ignored = default_image_dir(kernel=fake.kernel, modules_root=fake.modules_root)
    assert ignored == tmp_path / "home" / ".cache" / "wasmkeep" / "vm" / directory.name
    # Another kernel: another image.
    fake.kernel.write_bytes(b"another kernel")
    other_kernel = default_image_dir(
        kernel=fake.kernel, modules_root=fake.modules_root, cache_home=tmp_path
    )
    assert other_kernel.name != directory.name
    # A changed wasmkeep source: another image.
    copy = tmp_path / "src" / "wasmkeep"
    shutil.copytree(
        Path(wasmkeep.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    before = default_image_dir(
        kernel=fake.kernel, modules_root=fake.modules_root, cache_home=tmp_path
    )
    monkeypatch.setattr(wasmkeep, "__file__", str(copy / "__init__.py"))
    assert (
        default_image_dir(kernel=fake.kernel, modules_root=fake.modules_root, cache_home=tmp_path)
        == before
    )
    with (copy / "keep" / "vm.py").open("a") as file:
        file.write("\n# changed\n")
    changed = default_image_dir(
        kernel=fake.kernel, modules_root=fake.modules_root, cache_home=tmp_path
    )
    assert changed.name != before.name


def test_a_damaged_image_is_rebuilt(built: Built, tmp_path: Path) -> None:
    fake = built.fake
    target = tmp_path / "cache-entry"
    shutil.copytree(built.image.directory, target)

    def find() -> VmImage | None:
        return find_image(target, kernel=fake.kernel, modules_root=fake.modules_root)

    assert find() == VmImage.load(target)  # reused as it is
    # A flipped byte, same size: only the digest tells.
    data = bytearray(target.joinpath("initrd.img").read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.joinpath("initrd.img").write_bytes(bytes(data))
    VmImage.load(target)  # sizes agree
    with pytest.raises(VmImageError, match="SHA-256"):
        VmImage.load(target, verify=True)
    assert find() is None
    rebuilt = find_or_build_image(target, kernel=fake.kernel, modules_root=fake.modules_root)
    assert rebuilt.directory == target
    assert rebuilt.initrd_sha256 == built.image.initrd_sha256
    assert target.joinpath("initrd.img").read_bytes() == built.image.initrd.read_bytes()
    assert not [
        path for path in tmp_path.iterdir() if ".build-" in path.name or ".old-" in path.name
    ]


def test_an_unfinished_image_is_not_an_image(built: Built, tmp_path: Path) -> None:
    target = tmp_path / "unfinished"
    shutil.copytree(built.image.directory, target)
    (target / "image.json").unlink()
    with pytest.raises(VmImageError, match="unfinished") as caught:
        VmImage.load(target)
    assert "wasmkeep vm build-image --force" in caught.value.diagnostics()
    assert (
        find_image(target, kernel=built.fake.kernel, modules_root=built.fake.modules_root) is None
    )
    shutil.copytree(built.image.directory, tmp_path / "truncated")
    with (tmp_path / "truncated" / "vmlinuz").open("r+b") as file:
        file.truncate(10)
    with pytest.raises(VmImageError, match="vmlinuz is not the"):
        VmImage.load(tmp_path / "truncated")


@pytest.mark.parametrize(
    "document",
    [
        "[]",
        '{"format": 99}',
        '{"format": 1, "kernel": {}}',
        "not json",
    ],
)
def test_a_bad_manifest_is_refused(built: Built, tmp_path: Path, document: str) -> None:
    target = tmp_path / "bad"
    shutil.copytree(built.image.directory, target)
    (target / "image.json").write_text(document)
    with pytest.raises(VmImageError, match="not a usable keep image"):
        VmImage.load(target)


def test_a_directory_that_is_not_an_image_is_not_replaced(built: Built, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(VmImageError, match="is not a keep image"):
        find_or_build_image(target, kernel=built.fake.kernel, modules_root=built.fake.modules_root)
    assert (target / "notes.txt").read_text() == "mine"
    assert not (tmp_path / ".precious.lock").exists()


# -- a real image ---------------------------------------------------------------------------


def _installed_kernel() -> Path | None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    readable = [path for path in kernels if os.access(path, os.R_OK)]
    return readable[-1] if readable else None


GUEST_CHECK = """
import sys, ctypes.util
assert sys.prefix == sys.exec_prefix == "/usr", (sys.prefix, sys.exec_prefix)
assert sys.flags.isolated
# The guest's keep names its libraries for ctypes (no ldconfig in the image).
ctypes.util.find_library = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}.get
sys.path.insert(0, "/usr/lib/wasmkeep/site-packages")
import wasmtime, cryptography, wasmkeep.keep.runtime, wasmkeep.keep.vm, pyseccomp, ssl
engine = wasmtime.Engine()
store = wasmtime.Store(engine)
module = wasmtime.Module(engine, '(module (func (export "f") (result i32) i32.const 42))')
assert wasmtime.Instance(store, module, []).exports(store)["f"](store) == 42
from cryptography.hazmat.primitives.asymmetric import ec
ec.generate_private_key(ec.SECP256R1())
assert ssl.create_default_context().cert_store_stats()["x509_ca"] > 0
outside = [m.__file__ for m in list(sys.modules.values())
           if getattr(m, "__file__", None) and not m.__file__.startswith("/usr/lib/")]
assert not outside, outside
del store, module, engine
print("ok")
"""


@pytest.mark.slow
def test_a_real_image_runs_its_interpreter_in_a_chroot(tmp_path: Path) -> None:
    kernel = _installed_kernel()
    if kernel is None:
        pytest.skip("no readable kernel in /boot (apt-get install linux-image-amd64; run as root)")
    chroot = shutil.which("chroot")
    if os.geteuid() != 0 or chroot is None:
        pytest.skip("chroot needs root")
    output = tmp_path / "image"
    started = time.monotonic()
    built = run_wasmkeep(["vm", "build-image", "--output", str(output)], timeout=600)
    seconds = time.monotonic() - started
    assert built.returncode == 0, built.stderr.decode()
    stdout = built.stdout.decode()
    assert "built in" in stdout
    image = VmImage.load(output, verify=True)
    assert image.kernel_version == kernel.name.removeprefix("vmlinuz-")
    assert image.initrd_sha256 in stdout.replace("\n", "")
    compressed = image.kernel_size + image.initrd_size
    assert compressed < 60_000_000, f"{compressed} bytes"
    print(f"real image: {compressed / 1e6:.1f} MB, built in {seconds:.1f} s")
    # Built already: a second run finds it.
    again = run_wasmkeep(["vm", "build-image", "--output", str(output)], timeout=120)
    assert again.returncode == 0
    assert "up to date" in again.stdout.decode()
    # The virtio modules Debian builds as modules are there, in order.
    members = read_initrd(image.initrd)
    tree = Tree(members)
    listing = tree.lookup("/etc/wasmkeep/modules").data.decode().splitlines()
    for path in listing:
        assert tree.lookup(path).data[:4] == b"\x7fELF"
    names = [Path(path).name for path in listing]
    if "virtio_console.ko" in names:
        assert names.index("virtio.ko") < names.index("virtio_console.ko")
    # The interpreter, with nothing but the image's files.
    root = tmp_path / "root"
    root.mkdir()
    extract(members, root)
    completed = subprocess.run(
        [chroot, str(root), "/usr/bin/python3", "-I", "-c", GUEST_CHECK],
        capture_output=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin"},
    )
    assert completed.returncode == 0, completed.stderr.decode()
    assert completed.stdout == b"ok\n"


def test_the_cli_reports_errors_in_one_line(tmp_path: Path) -> None:
    result = run_wasmkeep(["vm", "build-image", "--kernel", str(tmp_path / "vmlinuz-0.0.1")])
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert lines == [f"wasmkeep: error: kernel {tmp_path / 'vmlinuz-0.0.1'}: no such file"]
    listed = run_wasmkeep(["vm", "--help"])
    assert b"build-image" in listed.stdout


def test_a_module_that_does_not_compile(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n")
    python = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    with pytest.raises(VmImageError, match=r"cannot compile .*broken\.py"):
        vm_image._compile_all(python, [(broken, "/x/broken.py")], RecordingProgress())


def test_the_cache_keeps_the_newest_images(tmp_path: Path) -> None:
    cache = tmp_path / "vm"
    cache.mkdir()
    names = [f"{index:016x}" for index in range(6)]
    for age, name in enumerate(reversed(names)):  # names[5] is the newest
        (cache / name).mkdir()
        (cache / name / "initrd.img").write_bytes(b"x")
        os.utime(cache / name, (time.time() - 100 * age,) * 2)
        (cache / f".{name}.lock").touch()
    busy = names[0]  # the oldest, but another process holds it
    leftover = cache / f".{names[5]}.build-abc"
    leftover.mkdir()
    os.utime(leftover, (time.time() - 7200,) * 2)
    fresh = cache / f".{names[5]}.build-def"
    fresh.mkdir()
    with vm_image._locked(cache / f".{busy}.lock") as held:
        assert held
        vm_image._prune_cache(cache, keep=names[1])
    left = sorted(path.name for path in cache.iterdir() if not path.name.startswith("."))
    assert left == sorted([busy, names[1], names[3], names[4], names[5]])
    assert not leftover.exists()
    assert fresh.exists()  # a build going on now
    assert not (cache / f".{names[2]}.lock").exists()
