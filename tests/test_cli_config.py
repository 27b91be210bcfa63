"""`wasmkeep config init` and `wasmkeep config check`, through the real command group."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from wasmkeep.cli.main import main
from wasmkeep.config import EXAMPLE_CONFIG


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


PEM = b"-----BEGIN CERTIFICATE-----\nTUlJQm9ndXM=\n-----END CERTIFICATE-----\n"


def test_init_writes_the_example_to_enarx_toml(in_tmp: Path) -> None:
    result = invoke("config", "init")
    assert result.exit_code == 0, result.output
    assert (in_tmp / "Enarx.toml").read_text(encoding="utf-8") == EXAMPLE_CONFIG
    assert "wrote Enarx.toml" in result.stdout


def test_init_writes_to_a_given_path(in_tmp: Path) -> None:
    result = invoke("config", "init", "app.toml")
    assert result.exit_code == 0, result.output
    assert (in_tmp / "app.toml").read_text(encoding="utf-8") == EXAMPLE_CONFIG
    assert "wrote app.toml" in result.stdout


def test_init_refuses_to_overwrite(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text("mine")
    result = invoke("config", "init")
    assert result.exit_code == 2
    assert result.stderr == (
        "wasmkeep: error: Enarx.toml: already exists (pass --force to overwrite it)\n"
    )
    assert (in_tmp / "Enarx.toml").read_text() == "mine"


def test_init_force_overwrites(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text("mine")
    result = invoke("config", "init", "--force")
    assert result.exit_code == 0, result.output
    assert (in_tmp / "Enarx.toml").read_text(encoding="utf-8") == EXAMPLE_CONFIG


def test_init_reports_a_write_error(in_tmp: Path) -> None:
    result = invoke("config", "init", "no-such-dir/Enarx.toml")
    assert result.exit_code == 2
    assert "no-such-dir/Enarx.toml: cannot write" in result.stderr


def test_init_dash_prints_the_example(in_tmp: Path) -> None:
    result = invoke("config", "init", "-")
    assert result.exit_code == 0
    assert result.stdout == EXAMPLE_CONFIG
    assert list(in_tmp.iterdir()) == []


def test_check_the_written_example(in_tmp: Path) -> None:
    assert invoke("config", "init").exit_code == 0
    result = invoke("config", "check", "Enarx.toml")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Enarx.toml: valid",
        "files (FD_COUNT=3):",
        "  fd 0: stdin   stdin",
        "  fd 1: stdout  stdout",
        "  fd 2: stderr  stderr",
    ]


def test_check_shows_every_part(in_tmp: Path) -> None:
    (in_tmp / "data").mkdir()
    (in_tmp / "client-ca.pem").write_bytes(PEM)
    (in_tmp / "backend-ca.pem").write_bytes(PEM)
    full = re.sub(r"(?m)^#(?=\S)", "", EXAMPLE_CONFIG)  # the examples, made active
    (in_tmp / "full.toml").write_text(full, encoding="utf-8")
    result = invoke("config", "check", "full.toml")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "full.toml: valid",
        "files (FD_COUNT=5):",
        "  fd 0: stdin   stdin",
        "  fd 1: stdout  stdout",
        "  fd 2: stderr  stderr",
        "  fd 3: listen  LISTEN  tls on [::]:8443, TLS 1.3+, "
        f"client certificate required (CAs in {(in_tmp / 'client-ca.pem').resolve()})",
        "  fd 4: connect BACKEND  tls to example.com:443, TLS 1.3+, "
        f"server verified with CAs in {(in_tmp / 'backend-ca.pem').resolve()}",
        "dirs:",
        f"  fd 5: /data -> {(in_tmp / 'data').resolve()} (read-write)",
        "args: --verbose --threads=2",
        "env: RUST_LOG",
        "steward: https://steward.example.com",
    ]


def test_check_shows_tls_defaults_and_no_tls_details_for_tcp(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text(
        'files = [\n{ kind = "listen", name = "A", tls_min = "1.2" },\n'
        '{ kind = "connect", host = "b.example" },\n'
        '{ kind = "listen", name = "C", prot = "tcp" },\n'
        '{ kind = "connect", host = "::1", prot = "tcp", port = 5432 },\n]\n'
    )
    result = invoke("config", "check", "Enarx.toml")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2:] == [
        "  fd 0: listen  A  tls on [::]:443, TLS 1.2+, no client certificate",
        "  fd 1: connect b.example  tls to b.example:443, TLS 1.3+, "
        "server verified with the system's CAs",
        "  fd 2: listen  C  tcp on [::]:80",
        "  fd 3: connect ::1  tcp to [::1]:5432",
    ]


def test_check_reports_a_missing_ca_file(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text('[[files]]\nkind = "connect"\nhost = "h"\nca = "ca.pem"\n')
    result = invoke("config", "check", "Enarx.toml")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"wasmkeep: error: Enarx.toml: files[0].ca: no such file: {in_tmp.resolve() / 'ca.pem'}\n"
    )


def test_check_without_files(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text("files = []")
    result = invoke("config", "check", "Enarx.toml")
    assert result.exit_code == 0, result.output
    assert "files: none" in result.stdout


def test_check_reports_the_error(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text('[[files]]\nkind = "listen"\nname = "L"\nport = 0\n')
    result = invoke("config", "check", "Enarx.toml")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "wasmkeep: error: Enarx.toml: files[0].port: expected an integer from 1 to 65535, got 0\n"
    )


def test_check_reports_a_missing_file(in_tmp: Path) -> None:
    result = invoke("config", "check", "nope.toml")
    assert result.exit_code == 2
    assert "wasmkeep: error: nope.toml: cannot read: No such file" in result.stderr


def test_check_reports_bad_toml_with_its_position(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text("args = [\n")
    result = invoke("config", "check", "Enarx.toml")
    assert result.exit_code == 2
    assert result.stderr.startswith("wasmkeep: error: Enarx.toml: end of file: invalid TOML: ")


def test_check_escapes_control_characters(in_tmp: Path) -> None:
    (in_tmp / "Enarx.toml").write_text(
        '[[files]]\nkind = "null"\nname = "\\u001b[31mred"\n[env]\n"\\u001b]0;x\\u0007" = "v"\n'
    )
    result = invoke("config", "check", "Enarx.toml")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    assert '  fd 0: null    "\\u001b[31mred"' in result.stdout.splitlines()


def test_config_help_lists_both_commands() -> None:
    result = invoke("config", "--help")
    assert result.exit_code == 0
    assert "init" in result.stdout
    assert "check" in result.stdout
