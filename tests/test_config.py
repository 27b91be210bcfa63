"""The workload config: Enarx.toml parsing, its checks, its errors and the CLI overrides."""

from __future__ import annotations

import contextlib
import math
import os
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from wasmkeep.config import (
    EXAMPLE_CONFIG,
    CaBundle,
    Config,
    ConnectFile,
    DirSpec,
    ListenFile,
    NullFile,
    Protocol,
    StderrFile,
    StdinFile,
    StdoutFile,
    TlsVersion,
    default_config,
    load_config,
    parse_config,
)
from wasmkeep.errors import ConfigError
from wasmkeep.limits import DEFAULT_LIMITS

# The test config of the Enarx crate `enarx-config` (src/lib.rs, mod test).
ENARX_CRATE_CONFIG = """
[[files]]
kind = "stdin"

[[files]]
name = "X"
kind = "listen"
prot = "tcp"
port = 9000

[[files]]
kind = "stdout"

[[files]]
kind = "null"

[[files]]
kind = "stderr"

[[files]]
kind = "connect"
host = "example.com"
"""


def load_text(tmp_path: Path, text: str | bytes, name: str = "Enarx.toml") -> Config:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return load_config(path)


def config_error(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return str(caught.value)


def uncomment_examples(text: str) -> str:
    """EXAMPLE_CONFIG with its examples (lines of "#" then no space) made active."""
    return re.sub(r"(?m)^#(?=\S)", "", text)


# Only the PEM framing is checked by the config (the keep's TLS stack parses the
# certificates), so a block of arbitrary base64 stands in for a real one.
PEM_BLOCK = (
    b"-----BEGIN CERTIFICATE-----\nTUlJQm9ndXNDZXJ0aWZpY2F0ZQ==\n-----END CERTIFICATE-----\n"
)
PEM = b"# Test CA\n" + PEM_BLOCK + PEM_BLOCK


def write_pem(path: Path, content: bytes = PEM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def example_files(directory: Path) -> None:
    """What the examples of EXAMPLE_CONFIG, made active, need beside the config."""
    (directory / "data").mkdir()
    write_pem(directory / "client-ca.pem")
    write_pem(directory / "backend-ca.pem")


# -- valid configs ----------------------------------------------------------------------


def test_the_enarx_crate_test_config() -> None:
    config = parse_config(ENARX_CRATE_CONFIG)
    assert config.fd_names == ("stdin", "X", "stdout", "null", "stderr", "example.com")
    assert config.files == (
        StdinFile(),
        ListenFile(name="X", prot=Protocol.TCP, port=9000, addr="::"),
        StdoutFile(),
        NullFile(),
        StderrFile(),
        ConnectFile(host="example.com", prot=Protocol.TLS, port=443),
    )
    listen, connect = config.files[1], config.files[5]
    assert isinstance(listen, ListenFile)
    assert isinstance(connect, ConnectFile)
    assert (listen.port, connect.port) == (9000, 443)


def test_an_empty_config_is_the_default() -> None:
    config = parse_config("")
    assert config == default_config()
    assert config.files == (StdinFile(), StdoutFile(), StderrFile())
    assert config.fd_names == ("stdin", "stdout", "stderr")
    assert (config.args, dict(config.env), config.steward, config.dirs) == ((), {}, None, ())


def test_every_key_at_the_top_level() -> None:
    config = parse_config(
        """
        args = ["--foo", "bar"]
        steward = "https://steward.example"
        [env]
        VAR = "value"
        "WITH SPACE" = ""
        """
    )
    assert config.args == ("--foo", "bar")
    assert dict(config.env) == {"VAR": "value", "WITH SPACE": ""}
    assert config.steward == "https://steward.example"


def test_empty_files_gives_no_stdio() -> None:
    config = parse_config("files = []")
    assert config.files == ()
    assert config.workload_env() == [("FD_COUNT", "0"), ("FD_NAMES", "")]


@pytest.mark.parametrize(
    ("kind", "model"),
    [("null", NullFile), ("stdin", StdinFile), ("stdout", StdoutFile), ("stderr", StderrFile)],
)
def test_stdio_kinds_default_their_name_to_the_kind(kind: str, model: type[NullFile]) -> None:
    config = parse_config(f'[[files]]\nkind = "{kind}"\n[[files]]\nkind = "{kind}"\nname = "B"')
    first, second = config.files
    assert isinstance(first, model)
    assert isinstance(second, model)
    assert (first.kind, first.name, first.given_name) == (kind, kind, None)
    assert (second.name, second.given_name) == ("B", "B")


def test_listen_defaults() -> None:
    tls, tcp = parse_config(
        '[[files]]\nkind = "listen"\nname = "A"\n'
        '[[files]]\nkind = "listen"\nname = "B"\nprot = "tcp"'
    ).files
    assert tls == ListenFile(name="A", prot=Protocol.TLS, addr="::", port=443)
    assert tcp == ListenFile(name="B", prot=Protocol.TCP, addr="::", port=80)


def test_listen_with_every_key() -> None:
    (listen,) = parse_config(
        '[[files]]\nkind = "listen"\nname = "L"\nprot = "tcp"\naddr = "127.0.0.1"\nport = 8080'
    ).files
    assert listen == ListenFile(name="L", prot=Protocol.TCP, addr="127.0.0.1", port=8080)
    assert listen.prot == "tcp"


def test_connect_defaults() -> None:
    tls, tcp = parse_config(
        '[[files]]\nkind = "connect"\nhost = "a.example"\n'
        '[[files]]\nkind = "connect"\nhost = "::1"\nprot = "tcp"\nname = "DB"'
    ).files
    assert isinstance(tls, ConnectFile)
    assert isinstance(tcp, ConnectFile)
    assert (tls.name, tls.prot, tls.port) == ("a.example", Protocol.TLS, 443)
    assert (tcp.name, tcp.prot, tcp.port, tcp.host) == ("DB", Protocol.TCP, 80, "::1")


def test_models_built_in_code_apply_the_same_defaults() -> None:
    assert ListenFile(name="x", prot=Protocol.TCP).port == 80
    assert ListenFile(name="x").port == 443
    assert ConnectFile(host="example.com", name="E").name == "E"
    assert Protocol.TCP.default_port == 80


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "example.com.",
        "localhost",
        "my_service",
        "10.0.0.1",
        "::1",
        "xn--bcher-kva.example",
    ],
)
def test_connect_hosts_accepted(host: str) -> None:
    (connect,) = parse_config(f'[[files]]\nkind = "connect"\nhost = "{host}"').files
    assert connect.name == host


@pytest.mark.parametrize("addr", ["::", "0.0.0.0", "127.0.0.1", "::ffff:10.0.0.1", "fe80::1"])
def test_listen_addresses_accepted(addr: str) -> None:
    (listen,) = parse_config(f'[[files]]\nkind = "listen"\nname = "L"\naddr = "{addr}"').files
    assert isinstance(listen, ListenFile)
    assert listen.addr == addr


@pytest.mark.parametrize(
    "url", ["https://steward.example", "http://127.0.0.1:3000/", "https://[::1]:8443/path"]
)
def test_steward_urls_accepted(url: str) -> None:
    assert parse_config(f'steward = "{url}"').steward == url


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    assert load_text(tmp_path, b'\xef\xbb\xbfargs = ["x"]').args == ("x",)


def test_config_is_frozen() -> None:
    config = parse_config('[env]\nA = "b"')
    with pytest.raises(ValidationError):
        config.args = ("changed",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.env["A"] = "changed"  # type: ignore[index]


# -- dirs ---------------------------------------------------------------------------------


def test_dirs_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "app" / "Enarx.toml").write_text(
        '[[dirs]]\nhost = "data"\n[[dirs]]\nhost = "data"\nguest = "/ro"\nreadonly = true'
    )
    config = load_config(tmp_path / "app" / "Enarx.toml")
    assert config.dirs == (
        DirSpec(host=tmp_path / "app" / "data", guest="data", readonly=False),
        DirSpec(host=tmp_path / "app" / "data", guest="/ro", readonly=True),
    )
    assert config.dirs[0].host.is_absolute()
    # Preopens come after the files: they add no FD_NAMES entry.
    assert config.fd_names == ("stdin", "stdout", "stderr")


def test_dirs_host_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    config = parse_config('[[dirs]]\nhost = "link"\nguest = "/x"', base_dir=tmp_path)
    assert config.dirs[0].host == (tmp_path / "real").resolve()


def test_parse_config_takes_relative_dirs_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_config('[[dirs]]\nhost = "d"').dirs[0].host == (tmp_path / "d").resolve()


# -- TLS keys (wasmkeep extension) ----------------------------------------------------------


def test_tls_listen_with_client_ca_and_tls_1_2(tmp_path: Path) -> None:
    write_pem(tmp_path / "clients.pem")
    (listen,) = load_text(
        tmp_path,
        '[[files]]\nkind = "listen"\nname = "API"\nprot = "tls"\n'
        'tls_min = "1.2"\nclient_ca = "clients.pem"',
    ).files
    assert isinstance(listen, ListenFile)
    assert listen.tls
    assert listen.tls_min is TlsVersion.TLS_1_2
    assert listen.client_ca == CaBundle(path=tmp_path / "clients.pem", pem=PEM)
    assert listen == ListenFile(
        name="API", tls_min=TlsVersion.TLS_1_2, client_ca=listen.client_ca, port=443
    )


def test_tls_connect_with_ca(tmp_path: Path) -> None:
    write_pem(tmp_path / "db-ca.pem")
    (connect,) = load_text(
        tmp_path, '[[files]]\nkind = "connect"\nhost = "db.example"\nca = "db-ca.pem"'
    ).files
    assert isinstance(connect, ConnectFile)
    assert (connect.tls, connect.tls_min, connect.host) == (True, TlsVersion.TLS_1_3, "db.example")
    assert connect.ca is not None
    assert (connect.ca.path, connect.ca.pem) == (tmp_path / "db-ca.pem", PEM)


def test_tls_defaults() -> None:
    listen, connect, tcp_listen, tcp_connect = parse_config(
        '[[files]]\nkind = "listen"\nname = "A"\n'
        '[[files]]\nkind = "connect"\nhost = "b.example"\n'
        '[[files]]\nkind = "listen"\nname = "C"\nprot = "tcp"\n'
        '[[files]]\nkind = "connect"\nhost = "d.example"\nprot = "tcp"'
    ).files
    assert isinstance(listen, ListenFile)
    assert isinstance(connect, ConnectFile)
    assert isinstance(tcp_listen, ListenFile)
    assert isinstance(tcp_connect, ConnectFile)
    # TLS 1.3 at least, no client certificate asked for, the system's CAs.
    assert (listen.tls, listen.tls_min, listen.client_ca) == (True, TlsVersion.TLS_1_3, None)
    assert (connect.tls, connect.tls_min, connect.ca) == (True, TlsVersion.TLS_1_3, None)
    assert (tcp_listen.tls, tcp_listen.client_ca) == (False, None)
    assert (tcp_connect.tls, tcp_connect.ca) == (False, None)
    assert (TlsVersion("1.2"), f"{TlsVersion.TLS_1_3}") == (TlsVersion.TLS_1_2, "1.3")


def test_ca_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pem(tmp_path / "app" / "certs" / "clients.pem")
    write_pem(tmp_path / "app" / "backend.pem", PEM_BLOCK)
    write_pem(tmp_path / "elsewhere" / "certs" / "clients.pem", PEM_BLOCK)  # a decoy
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "app" / "Enarx.toml").write_text(
        '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = "certs/clients.pem"\n'
        '[[files]]\nkind = "connect"\nhost = "h"\nca = "./certs/../backend.pem"\n'
    )
    listen, connect = load_config(tmp_path / "app" / "Enarx.toml").files
    assert isinstance(listen, ListenFile)
    assert isinstance(connect, ConnectFile)
    assert listen.client_ca == CaBundle(path=tmp_path / "app" / "certs" / "clients.pem", pem=PEM)
    assert connect.ca == CaBundle(path=tmp_path / "app" / "backend.pem", pem=PEM_BLOCK)


def test_parse_config_takes_ca_paths_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pem(tmp_path / "ca.pem")
    monkeypatch.chdir(tmp_path)
    (connect,) = parse_config('[[files]]\nkind = "connect"\nhost = "h"\nca = "ca.pem"').files
    assert isinstance(connect, ConnectFile)
    assert connect.ca is not None
    assert connect.ca.path == (tmp_path / "ca.pem").resolve()


def test_ca_path_is_resolved(tmp_path: Path) -> None:
    write_pem(tmp_path / "real.pem")
    (tmp_path / "link.pem").symlink_to(tmp_path / "real.pem")
    (connect,) = parse_config(
        '[[files]]\nkind = "connect"\nhost = "h"\nca = "link.pem"', base_dir=tmp_path
    ).files
    assert isinstance(connect, ConnectFile)
    assert connect.ca == CaBundle(path=(tmp_path / "real.pem").resolve(), pem=PEM)


def test_the_error_names_file_and_key_path_of_a_later_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Enarx.toml").write_text(
        '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "listen"\n'
        'name = "P"\nprot = "tcp"\nclient_ca = "x.pem"\n'
        '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = "missing.pem"\ntls_min = "1.1"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config("Enarx.toml")
    assert sorted(str(caught.value).splitlines()) == [
        'Enarx.toml: files[2].client_ca: only for prot = "tls", not "tcp"',
        f"Enarx.toml: files[3].client_ca: no such file: {tmp_path / 'missing.pem'}",
        'Enarx.toml: files[3].tls_min: expected "1.2" or "1.3", got "1.1"',
    ]


def test_ca_file_size_limit(tmp_path: Path) -> None:
    limit = DEFAULT_LIMITS.max_ca_bundle_size
    assert limit == 1024 * 1024
    padding = b"#" * (limit - len(PEM) - 1) + b"\n"
    write_pem(tmp_path / "full.pem", padding + PEM)
    write_pem(tmp_path / "over.pem", padding + PEM + b"\n")
    text = '[[files]]\nkind = "connect"\nhost = "h"\nca = "{}"'
    (connect,) = parse_config(text.format("full.pem"), base_dir=tmp_path).files
    assert isinstance(connect, ConnectFile)
    assert connect.ca is not None
    assert len(connect.ca.pem) == limit
    with pytest.raises(ConfigError) as caught:
        parse_config(text.format("over.pem"), base_dir=tmp_path)
    assert str(caught.value) == (
        f"<config>: files[0].ca: {tmp_path / 'over.pem'} is larger than the limit of {limit} bytes"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a PEM certificate bundle (no BEGIN CERTIFICATE)"),
        (
            PEM_BLOCK[:40],  # cut off inside the block
            "not a PEM certificate bundle (no complete BEGIN ... END CERTIFICATE block)",
        ),
        (
            PEM_BLOCK + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "holds a private key; a CA file must hold only certificates",
        ),
        (
            b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n" + PEM_BLOCK,
            "holds a private key",
        ),
    ],
)
def test_ca_file_content_is_checked(tmp_path: Path, content: bytes, expected: str) -> None:
    write_pem(tmp_path / "ca.pem", content)
    with pytest.raises(ConfigError) as caught:
        parse_config('[[files]]\nkind = "connect"\nhost = "h"\nca = "ca.pem"', base_dir=tmp_path)
    assert str(caught.value).startswith(f"<config>: files[0].ca: {expected}")
    assert str(caught.value).endswith(str(tmp_path / "ca.pem"))


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"files\[0\]\.client_ca: not a regular file: "):
        parse_config(
            '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = "ca.pem"', base_dir=tmp_path
        )


def test_an_unreadable_ca_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file, so the kernel's refusal is played by a fake os.open.
    write_pem(tmp_path / "ca.pem")
    real_open = os.open

    def refuse(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if Path(path).name == "ca.pem":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ConfigError, match=r"files\[0\]\.ca: cannot read \S+: Permission denied"):
        parse_config('[[files]]\nkind = "connect"\nhost = "h"\nca = "ca.pem"', base_dir=tmp_path)


def test_tls_models_built_in_code_are_checked(tmp_path: Path) -> None:
    bundle = CaBundle(path=tmp_path / "ca.pem", pem=PEM)
    assert "BEGIN" not in repr(bundle)  # the PEM is not dumped into logs and tracebacks
    assert ListenFile(name="L", client_ca=bundle).client_ca is bundle
    assert ConnectFile(host="h", ca=bundle, tls_min=TlsVersion.TLS_1_2).ca is bundle
    with pytest.raises(ValidationError, match="only for prot"):
        ListenFile(name="L", prot=Protocol.TCP, client_ca=bundle)
    with pytest.raises(ValidationError, match="only for prot"):
        ConnectFile(host="h", prot=Protocol.TCP, tls_min=TlsVersion.TLS_1_3)
    with pytest.raises(ValidationError, match="no BEGIN CERTIFICATE"):
        CaBundle(path=tmp_path / "ca.pem", pem=b"not pem")
    with pytest.raises(ValidationError, match="larger than the limit"):
        CaBundle(path=tmp_path / "ca.pem", pem=PEM + b"#" * DEFAULT_LIMITS.max_ca_bundle_size)
    with pytest.raises(ValidationError):
        CaBundle(path=tmp_path / "ca.pem", pem=PEM.decode())  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        bundle.pem = b""  # type: ignore[misc]


def test_with_overrides_keeps_the_ca_bundles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pem(tmp_path / "app" / "ca.pem")
    base = load_text(tmp_path / "app", '[[files]]\nkind = "connect"\nhost = "h"\nca = "ca.pem"')
    monkeypatch.chdir(tmp_path)  # where the relative path would not be found again
    config = base.with_overrides(args=["x"])
    assert config.files == base.files


# -- invalid configs: each names the file, the key path and what was expected -------------

INVALID = [
    pytest.param("foo = 1", "foo: unknown key", id="unknown-top-level-key"),
    pytest.param('[stdin]\nkind = "null"', "stdin: unknown key", id="old-enarx-stdin-table"),
    pytest.param(
        '[[files]]\nkind = "stdin"\nbogus = 1', "files[0].bogus: unknown key", id="unknown-file-key"
    ),
    pytest.param(
        '[[files]]\nkind = "pipe"', 'files[0].kind: expected one of "null"', id="bad-kind"
    ),
    pytest.param('[[files]]\nname = "x"', "files[0].kind: required", id="missing-kind"),
    pytest.param("[[files]]\nkind = 3", "files[0].kind: expected one of", id="kind-not-a-string"),
    pytest.param(
        '[[files]]\nkind = "listen"',
        'files[0].name: required for kind "listen"',
        id="listen-without-name",
    ),
    pytest.param(
        '[[files]]\nkind = "null"\nname = "test:"',
        'files[0].name: expected a string without ":", got "test:"',
        id="colon-in-name",
    ),
    pytest.param(
        '[[files]]\nkind = "null"\nname = "a\\u0000b"',
        "files[0].name: must not contain a NUL",
        id="nul-in-name",
    ),
    pytest.param(
        '[[files]]\nkind = "stdin"\nname = "A"\n[[files]]\nkind = "stdout"\nname = "A"',
        'files[1].name: "A" is already the name of files[0]',
        id="duplicate-names",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h.example"\n'
        '[[files]]\nkind = "connect"\nhost = "h.example"',
        'files[1].name: "h.example" is already the name of files[0]',
        id="duplicate-default-names",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nport = 0',
        "files[0].port: expected an integer from 1 to 65535, got 0",
        id="port-0",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nport = 70000',
        "files[0].port: expected an integer from 1 to 65535, got 70000",
        id="port-70000",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nport = "x"',
        'files[0].port: expected an integer from 1 to 65535, got "x"',
        id="port-string",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nport = 443.0',
        "files[0].port: expected an integer from 1 to 65535, got 443.0",
        id="port-float",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nport = true',
        "files[0].port: expected an integer from 1 to 65535, got true",
        id="port-bool",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nport = 1979-05-27',
        "files[0].port: expected an integer from 1 to 65535, got a date",
        id="port-date",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nprot = "udp"',
        'files[0].prot: expected "tls" or "tcp", got "udp"',
        id="bad-prot",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\naddr = "localhost"',
        'files[0].addr: expected an IP address literal such as "::" or "127.0.0.1", '
        'got "localhost"',
        id="addr-not-an-ip",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\naddr = "1.2.3.4.5"',
        "files[0].addr: expected an IP address literal",
        id="addr-too-many-parts",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\naddr = "fe80::1%\\u001b[31m"',
        "files[0].addr: expected an IP address literal",
        id="addr-scope-with-control-characters",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\naddr = "::"',
        'files[0].addr: not allowed for kind "connect"',
        id="addr-on-connect",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nhost = "h"',
        'files[0].host: not allowed for kind "listen"',
        id="host-on-listen",
    ),
    pytest.param(
        '[[files]]\nkind = "stdin"\nprot = "tls"',
        'files[0].prot: not allowed for kind "stdin"',
        id="prot-on-stdin",
    ),
    pytest.param(
        '[[files]]\nkind = "stdout"\nport = 1',
        'files[0].port: not allowed for kind "stdout"',
        id="port-on-stdout",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"', 'files[0].host: required for kind "connect"', id="no-host"
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "bad host"',
        'files[0].host: expected a DNS name or an IP address literal, got "bad host"',
        id="host-with-space",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "1.2.3"',
        "files[0].host: expected a DNS name",
        id="host-numeric-tld",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "https://x.example"',
        "files[0].host: expected a DNS name",
        id="host-is-a-url",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = ""',
        "files[0].host: expected a DNS name",
        id="empty-host",
    ),
    pytest.param("files = [1]", "files[0]: expected a table, got 1", id="file-not-a-table"),
    pytest.param('files = "stdin"', "files: expected an array of tables", id="files-not-an-array"),
    pytest.param(
        'args = "--foo"', 'args: expected an array of strings, got "--foo"', id="args-str"
    ),
    pytest.param('args = ["a", 1]', "args[1]: expected a string, got 1", id="args-item"),
    pytest.param('args = ["a\\u0000"]', "args[0]: must not contain a NUL", id="nul-in-arg"),
    pytest.param('env = ["A=b"]', "env: expected a table of strings", id="env-not-a-table"),
    pytest.param("[env]\nA = 1", "env.A: expected a string, got 1", id="env-value-int"),
    pytest.param(
        '[env]\n"A=B" = "c"', 'env."A=B": expected a non-empty variable name', id="env-eq"
    ),
    pytest.param('[env]\n"" = "c"', 'env."": expected a non-empty variable name', id="env-empty"),
    pytest.param(
        'steward = "not a url"', "steward: expected an http or https URL", id="steward-text"
    ),
    pytest.param('steward = "ftp://x.example"', "steward: expected an http", id="steward-ftp"),
    pytest.param('steward = "https://"', "steward: expected an http", id="steward-no-host"),
    pytest.param('steward = "https://x:99999"', "steward: expected an http", id="steward-bad-port"),
    pytest.param(
        "steward = 1",
        'steward: expected an http or https URL such as "https://steward.example.com", got 1',
        id="steward-int",
    ),
    pytest.param('[[dirs]]\nguest = "/x"', "dirs[0].host: required", id="dirs-no-host"),
    pytest.param('[[dirs]]\nhost = "."\nmode = "rw"', "dirs[0].mode: unknown key", id="dirs-key"),
    pytest.param(
        '[[dirs]]\nhost = "."\nguest = ""',
        "dirs[0].guest: expected a non-empty path",
        id="empty-guest",
    ),
    pytest.param(
        '[[dirs]]\nhost = "."\nreadonly = "yes"',
        'dirs[0].readonly: expected true or false, got "yes"',
        id="readonly-str",
    ),
    pytest.param(
        '[[dirs]]\nhost = "missing"', "dirs[0].host: no such directory: ", id="dirs-missing"
    ),
    pytest.param(
        '[[dirs]]\nhost = "Enarx.toml"', "dirs[0].host: not a directory: ", id="dirs-file"
    ),
    pytest.param(
        '[[dirs]]\nhost = "."\nguest = "/d"\n[[dirs]]\nhost = ".."\nguest = "/d/"',
        'dirs[1].guest: "/d/" is already the guest path of dirs[0]',
        id="dirs-duplicate-guest",
    ),
    # The TLS keys (a wasmkeep extension). The test runs in a directory holding
    # only Enarx.toml: a file that exists but is not PEM.
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\ntls_min = "1.1"',
        'files[0].tls_min: expected "1.2" or "1.3", got "1.1"',
        id="tls-min-1.1",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\ntls_min = 1.2',
        'files[0].tls_min: expected "1.2" or "1.3" in quotes, got the number 1.2',
        id="tls-min-a-number",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\ntls_min = 13',
        'files[0].tls_min: expected "1.2" or "1.3", got 13',
        id="tls-min-an-integer",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nprot = "tcp"\ntls_min = "1.3"',
        'files[0].tls_min: only for prot = "tls", not "tcp"',
        id="tls-min-on-tcp-listen",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nprot = "tcp"\ntls_min = "1.2"',
        'files[0].tls_min: only for prot = "tls", not "tcp"',
        id="tls-min-on-tcp-connect",
    ),
    pytest.param(
        # Checked before the file is: a tcp socket never reads it.
        '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = "missing.pem"\nprot = "tcp"',
        'files[0].client_ca: only for prot = "tls", not "tcp"',
        id="client-ca-on-tcp",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nca = "Enarx.toml"\nprot = "tcp"',
        'files[0].ca: only for prot = "tls", not "tcp"',
        id="ca-on-tcp",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = "missing.pem"',
        "files[0].client_ca: no such file: ",
        id="client-ca-missing",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nca = "certs/missing.pem"',
        "files[0].ca: no such file: ",
        id="ca-missing",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = "."',
        "files[0].client_ca: not a regular file: ",
        id="client-ca-a-directory",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nca = "Enarx.toml"',
        "files[0].ca: not a PEM certificate bundle (no BEGIN CERTIFICATE): ",
        id="ca-not-pem",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = "Enarx.toml"',
        "files[0].client_ca: not a PEM certificate bundle (no BEGIN CERTIFICATE): ",
        id="client-ca-not-pem",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nclient_ca = ""',
        'files[0].client_ca: expected the path of a PEM file of CA certificates, got ""',
        id="client-ca-empty",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nca = 1',
        "files[0].ca: expected the path of a PEM file of CA certificates, got 1",
        id="ca-not-a-string",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nca = { path = "x", pem = "y" }',
        "files[0].ca: expected the path of a PEM file of CA certificates, got a table",
        id="ca-inline-table",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nca = "a\\u0000b"',
        "files[0].ca: must not contain a NUL",
        id="ca-nul",
    ),
    pytest.param(
        '[[files]]\nkind = "listen"\nname = "L"\nca = "Enarx.toml"',
        'files[0].ca: not allowed for kind "listen" (allowed: kind, name, prot, addr, port, '
        "tls_min, client_ca)",
        id="ca-on-listen",
    ),
    pytest.param(
        '[[files]]\nkind = "connect"\nhost = "h"\nclient_ca = "Enarx.toml"',
        'files[0].client_ca: not allowed for kind "connect"',
        id="client-ca-on-connect",
    ),
    pytest.param(
        '[[files]]\nkind = "stdin"\ntls_min = "1.3"',
        'files[0].tls_min: not allowed for kind "stdin"',
        id="tls-min-on-stdin",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_configs_name_file_key_and_expectation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Enarx.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config("Enarx.toml")
    assert f"Enarx.toml: {expected}" in str(caught.value)


def test_the_message_is_one_line_per_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Enarx.toml").write_text(
        '[[files]]\nkind = "stdin"\n' * 3
        + '[[files]]\nkind = "connect"\nhost = "h"\nport = "x"\nfoo = 1'
    )
    with pytest.raises(ConfigError) as caught:
        load_config("Enarx.toml")
    assert str(caught.value).splitlines() == [
        'Enarx.toml: files[3].port: expected an integer from 1 to 65535, got "x"',
        'Enarx.toml: files[3].foo: unknown key (kind "connect" allows: '
        "kind, name, host, prot, port, tls_min, ca)",
    ]
    assert caught.value.exit_status == 2


def test_many_problems_are_cut_short(tmp_path: Path) -> None:
    message = config_error(tmp_path, "args = [" + ", ".join(["1"] * 100) + "]")
    lines = message.splitlines()
    assert len(lines) == 21
    assert lines[-1].endswith("... and 80 more problems")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('args = ["a"\nsteward = 1', "line 2, column 1"),
        ("[[files]]\nkind = stdin\n", "line 2, column 8"),
        ("a = 1\na = 2\n", "line 2, column 6"),
        ('[env]\nA = "unterminated', "end of file"),
    ],
)
def test_toml_syntax_errors_name_file_line_and_column(
    tmp_path: Path, text: str, where: str
) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'Enarx.toml'}: {where}: invalid TOML: ")


def test_deeply_nested_toml_is_an_error(tmp_path: Path) -> None:
    assert "nested too deeply" in config_error(tmp_path, "a = " + "[" * 100_000)


def test_an_integer_too_long_to_convert_is_an_error(tmp_path: Path) -> None:
    assert "invalid TOML" in config_error(tmp_path, "a = " + "9" * 5000)


def test_a_huge_hex_integer_is_described_not_printed(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[[files]]\nkind = 0x" + "f" * 4000)
    assert "files[0].kind: expected one of" in message
    assert "got a very large integer" in message


@pytest.mark.parametrize(
    "template",
    [
        "args = [{h}]",
        "steward = {h}",
        "[env]\nA = {h}",
        '[[files]]\nkind = "listen"\nname = {h}\nprot = {h}\naddr = {h}\nport = {h}',
        '[[files]]\nkind = "connect"\nhost = {h}',
        '[[files]]\nkind = "listen"\nname = "L"\ntls_min = {h}\nclient_ca = {h}',
        '[[files]]\nkind = "connect"\nhost = "h"\ntls_min = {h}\nca = {h}',
        "[[dirs]]\nhost = {h}\nguest = {h}\nreadonly = {h}",
    ],
)
def test_huge_integers_anywhere_are_described(template: str) -> None:
    with pytest.raises(ConfigError, match="got a very large integer"):
        parse_config(template.format(h="0x" + "f" * 4000))


def test_file_too_large(tmp_path: Path) -> None:
    text = "#" * (DEFAULT_LIMITS.max_config_size + 1)
    assert "larger than the limit of 1048576 bytes" in config_error(tmp_path, text)
    with pytest.raises(ConfigError, match=r"^<config>: larger than the limit"):
        parse_config(text)


def test_file_not_utf8(tmp_path: Path) -> None:
    message = config_error(tmp_path, b'args = ["\xff"]')
    assert message.startswith(f"{tmp_path / 'Enarx.toml'}: not valid UTF-8 at byte offset 9")


def test_file_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read: No such file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)


def test_too_many_files(tmp_path: Path) -> None:
    count = DEFAULT_LIMITS.max_config_files + 1
    text = "".join(f'[[files]]\nkind = "null"\nname = "n{i}"\n' for i in range(count))
    assert f"files: at most 256 files allowed, got {count}" in config_error(tmp_path, text)
    ok = "".join(f'[[files]]\nkind = "null"\nname = "n{i}"\n' for i in range(count - 1))
    assert len(load_text(tmp_path, ok).files) == count - 1


def test_too_many_dirs(tmp_path: Path) -> None:
    count = DEFAULT_LIMITS.max_preopens + 1
    text = "".join(f'[[dirs]]\nhost = "."\nguest = "/d{i}"\n' for i in range(count))
    assert f"dirs: at most 64 dirs allowed, got {count}" in config_error(tmp_path, text)


def test_a_lone_surrogate_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"args\[0\]: must be valid Unicode"):
        parse_config('args = ["\ud800"]')


# -- the guest environment ------------------------------------------------------------------


def test_workload_env_appends_fd_count_and_fd_names() -> None:
    config = parse_config(ENARX_CRATE_CONFIG + '[env]\nB = "1"\nA = "2"\n')
    assert config.workload_env() == [
        ("B", "1"),
        ("A", "2"),
        ("FD_COUNT", "6"),
        ("FD_NAMES", "stdin:X:stdout:null:stderr:example.com"),
    ]


def test_fd_variables_override_the_config() -> None:
    config = parse_config('[env]\nFD_NAMES = "mine"\nFD_COUNT = "9"\nX = "y"')
    assert config.workload_env() == [
        ("X", "y"),
        ("FD_COUNT", "3"),
        ("FD_NAMES", "stdin:stdout:stderr"),
    ]


# -- command-line overrides ------------------------------------------------------------------


def test_with_overrides_appends_args_and_overrides_env() -> None:
    base = parse_config('args = ["a"]\n[env]\nA = "1"\nB = "2"')
    config = base.with_overrides(args=["b", "c"], env=["B=x=y", "C=", "FD_COUNT=9"])
    assert config.args == ("a", "b", "c")
    assert dict(config.env) == {"A": "1", "B": "x=y", "C": "", "FD_COUNT": "9"}
    assert dict(config.workload_env())["FD_COUNT"] == "3"
    assert base.args == ("a",)  # the original is unchanged
    assert config.files == base.files


def test_with_overrides_without_flags_is_the_same_config() -> None:
    assert default_config().with_overrides() == default_config()


@pytest.mark.parametrize("item", ["NOEQUALS", "=value", ""])
def test_env_flag_errors_name_the_flag_and_item(item: str) -> None:
    with pytest.raises(ConfigError) as caught:
        default_config().with_overrides(env=[item])
    assert str(caught.value).startswith(f'--env "{item}": expected KEY=VALUE')


def test_dir_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    monkeypatch.chdir(tmp_path)
    config = default_config().with_overrides(dirs=["rw", "rw::/data"], readonly_dirs=["ro::/ro"])
    assert config.dirs == (
        DirSpec(host=tmp_path / "rw", guest="rw", readonly=False),
        DirSpec(host=tmp_path / "rw", guest="/data", readonly=False),
        DirSpec(host=tmp_path / "ro", guest="/ro", readonly=True),
    )


def test_dir_flags_come_after_config_dirs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    base = parse_config('[[dirs]]\nhost = "a"\nguest = "/a"', base_dir=tmp_path)
    config = base.with_overrides(readonly_dirs=[f"{tmp_path / 'a'}::/b"])
    assert [spec.guest for spec in config.dirs] == ["/a", "/b"]


@pytest.mark.parametrize(
    ("flag", "item", "expected"),
    [
        ("dirs", "missing::/m", '--dir "missing::/m": host: no such directory: '),
        ("dirs", "file::/f", '--dir "file::/f": host: not a directory: '),
        ("dirs", "::/x", '--dir "::/x": host: expected the path of an existing directory, got ""'),
        ("readonly_dirs", "d::", '--dir-ro "d::": guest: expected a non-empty path, got ""'),
        ("readonly_dirs", "d::/cfg", '--dir-ro "d::/cfg": guest path "/cfg" is already preopened'),
        ("dirs", "d::/cfg/", '--dir "d::/cfg/": guest path "/cfg/" is already preopened'),
    ],
)
def test_dir_flag_errors_name_the_flag_and_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str, item: str, expected: str
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "file").touch()
    monkeypatch.chdir(tmp_path)
    base = parse_config('[[dirs]]\nhost = "d"\nguest = "/cfg"')
    flags = {"dirs": [item]} if flag == "dirs" else {"readonly_dirs": [item]}
    with pytest.raises(ConfigError) as caught:
        base.with_overrides(**flags)
    assert str(caught.value).startswith(expected)


def test_the_same_guest_path_from_two_flags_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'^--dir-ro "\S+::/x": guest path "/x" is already'):
        default_config().with_overrides(dirs=[f"{tmp_path}::/x"], readonly_dirs=[f"{tmp_path}::/x"])


def test_too_many_dirs_from_flags(tmp_path: Path) -> None:
    items = [f"{tmp_path}::/d{i}" for i in range(DEFAULT_LIMITS.max_preopens + 1)]
    with pytest.raises(ConfigError, match=r"^command line: dirs: at most 64 dirs allowed"):
        default_config().with_overrides(dirs=items)


def test_args_and_env_size_limits() -> None:
    big = "a" * DEFAULT_LIMITS.max_args_bytes
    with pytest.raises(ConfigError, match=r"^command line: args: \d+ bytes in total"):
        default_config().with_overrides(args=[big])
    with pytest.raises(ConfigError, match=r"^command line: env: \d+ bytes in total"):
        default_config().with_overrides(env=[f"A={big}"])


def test_an_undecodable_flag_is_a_config_error() -> None:
    # A command-line byte that is not UTF-8 arrives as a lone surrogate.
    with pytest.raises(ConfigError, match=r"^command line: args"):
        default_config().with_overrides(args=["\udcff"])


# -- the example -----------------------------------------------------------------------------


def test_example_config_is_the_default() -> None:
    assert parse_config(EXAMPLE_CONFIG) == default_config()


def test_example_config_examples_are_valid(tmp_path: Path) -> None:
    example_files(tmp_path)
    config = parse_config(uncomment_examples(EXAMPLE_CONFIG), base_dir=tmp_path)
    assert config.fd_names == ("stdin", "stdout", "stderr", "LISTEN", "BACKEND")
    listen, connect = config.files[3:]
    assert isinstance(listen, ListenFile)
    assert isinstance(connect, ConnectFile)
    assert listen.client_ca == CaBundle(path=tmp_path / "client-ca.pem", pem=PEM)
    assert connect.ca == CaBundle(path=tmp_path / "backend-ca.pem", pem=PEM)
    assert config.args
    assert config.env
    assert config.steward
    assert config.dirs == (DirSpec(host=tmp_path / "data", guest="/data", readonly=False),)


def test_example_config_shows_every_key() -> None:
    examples = uncomment_examples(EXAMPLE_CONFIG)
    shown = set(re.findall(r"(?m)^(\w+) =", examples))
    keys = {"args", "steward", "kind", "name", "prot", "addr", "port", "host", "guest", "readonly"}
    keys |= {"tls_min", "client_ca", "ca"}
    assert keys <= shown
    for text in ("FD_COUNT", "FD_NAMES", "fd 0", "[[dirs]]", "[env]", "default"):
        assert text in EXAMPLE_CONFIG


# -- any input gives a Config or a ConfigError -------------------------------------------------


class Huge:
    """Written as an integer too long for str(), which no message may print."""

    def __repr__(self) -> str:
        return "HUGE"


HUGE = Huge()
FILE_KEYS = [
    "kind",
    "name",
    "prot",
    "addr",
    "port",
    "host",
    "guest",
    "readonly",
    "tls_min",
    "client_ca",
    "ca",
    "x",
]
TOP_KEYS = ["args", "env", "steward", "files", "dirs", "x"]

scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "null",
            "stdin",
            "stdout",
            "stderr",
            "listen",
            "connect",
            "tls",
            "tcp",
            "1.2",
            "1.3",
            "::",
            "/",
            ".",
            "example.com",
            "https://s.example",
            "a:b",
            "",
            "\x00",
        ]
    ),
    st.integers(min_value=-1, max_value=70000),
    st.just(HUGE),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FILE_KEYS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)
file_tables = st.dictionaries(st.sampled_from(FILE_KEYS), values, max_size=6)
documents = st.fixed_dictionaries(
    {},
    optional={
        "args": st.lists(values, max_size=3) | values,
        "env": st.dictionaries(st.text(max_size=5), values, max_size=3) | values,
        "steward": values,
        "files": st.lists(file_tables, max_size=5) | values,
        "dirs": st.lists(file_tables, max_size=3) | values,
        "x": values,
    },
)


def toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char < "\x7f":
            out.append(char)
        else:
            out.append(f"\\U{ord(char):08X}")
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    match value:
        case bool():
            return "true" if value else "false"
        case Huge():
            return "0x" + "f" * 4000
        case int():
            return str(value)
        case float():
            if math.isnan(value):
                return "nan"
            if math.isinf(value):
                return "inf" if value > 0 else "-inf"
            return repr(value)
        case str():
            return toml_string(value)
        case list():
            return "[" + ", ".join(toml_value(item) for item in value) + "]"
        case dict():
            pairs = (f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
            return "{" + ", ".join(pairs) + "}"
    raise AssertionError(value)


def toml_document(data: dict[str, object]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in data.items())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_toml_document_gives_a_config_or_a_config_error(data: dict[str, object]) -> None:
    text = toml_document(data)
    tomllib.loads(text)  # the generator writes valid TOML
    try:
        config = parse_config(text, source="fuzz.toml")
    except ConfigError as error:
        message = str(error)
    else:
        assert len(set(config.fd_names)) == len(config.files)
        return
    assert all(line.startswith("fuzz.toml: ") for line in message.splitlines())


@settings(max_examples=300)
@given(st.text())
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as error:
        message = str(error)
    else:
        return
    assert message.startswith("<config>: ")


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("[]{}=\"',.\n #kindfilesargsenv:0123456789tls")))
def test_any_toml_like_text_gives_a_config_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


@settings(max_examples=200)
@given(
    st.lists(st.text(max_size=10), max_size=3),
    st.lists(st.text(max_size=10), max_size=3),
    st.lists(st.text(max_size=10) | st.sampled_from([".", "/", ".::/x", "/::", "::"]), max_size=3),
    st.lists(st.text(max_size=10) | st.sampled_from([".", "/", "/::/x"]), max_size=3),
)
def test_any_flags_give_a_config_or_a_config_error(
    args: list[str], env: list[str], dirs: list[str], readonly_dirs: list[str]
) -> None:
    with contextlib.suppress(ConfigError):
        default_config().with_overrides(args=args, env=env, dirs=dirs, readonly_dirs=readonly_dirs)
