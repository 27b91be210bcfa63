"""The attestation policy (`wasmkeep.attestation.policy`): its file, and every rule
passing and failing, on verdicts from the real vectors where they exist."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmkeep.attestation.errors import PolicyError
from wasmkeep.attestation.policy import (
    TCB_STATUSES,
    Policy,
    default_policy,
    load_policy,
    parse_policy,
)
from wasmkeep.attestation.software import SoftwareEvidence, verify_software
from wasmkeep.attestation.verdict import Check, Claims, Tee, Verdict

ASSETS = Path(__file__).parent / "assets" / "attestation"
NOW = datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)
DIGEST = "sha256:" + "12" * 32
OTHER_DIGEST = "sha256:" + "34" * 32
LOGGER = "wasmkeep.attestation.policy"


# -- verdicts to evaluate ---------------------------------------------------------------


def snp_verdict(name: str = "milan-virtee") -> Verdict:
    """A real verdict: the vector's report verified against AMD's pinned chain."""
    from wasmkeep.attestation.snp import load_amd_certificate, verify_snp

    folder = ASSETS / "snp" / name
    vcek = load_amd_certificate((folder / "vcek.der").read_bytes())
    verdict = verify_snp((folder / "report.bin").read_bytes(), vcek, now=NOW)
    assert verdict.accepted, verdict.failures
    return verdict


def with_claims(verdict: Verdict, **changes: Any) -> Verdict:
    """`verdict` with some claims changed (fields merged), as another report would give."""
    claims = verdict.claims
    assert claims is not None
    fields = dict(claims.fields)
    fields.update(changes.pop("fields", {}))
    values: dict[str, Any] = {
        "tee": claims.tee,
        "measurement": claims.measurement,
        "report_data": claims.report_data,
        "debug": claims.debug,
        "tcb_status": claims.tcb_status,
        "advisories": claims.advisories,
        "fields": fields,
    }
    values.update(changes)
    return Verdict(Claims(**values), verdict.checks)


def tdx_verdict(**changes: Any) -> Verdict:
    """A verdict as a TDX quote gives, its fields named as the quote's body names them."""
    fields = {
        "rtmr0": "aa" * 48,
        "rtmr1": "bb" * 48,
        "rtmr2": "00" * 48,
        "rtmr3": "00" * 48,
        "tee_tcb_svn": "0501" + "00" * 14,
        "mrconfigid": "00" * 48,
        "qe_identity_checked": True,
    }
    fields.update(changes.pop("fields", {}))
    values: dict[str, Any] = {
        "tee": Tee.TDX,
        "measurement": bytes.fromhex("cc" * 48),
        "report_data": bytes(64),
        "debug": False,
        "tcb_status": "UpToDate",
        "advisories": (),
        "fields": fields,
    }
    values.update(changes)
    return Verdict(Claims(**values), (Check("quote_signature", True, "verifies"),))


def sgx_verdict(**changes: Any) -> Verdict:
    fields: dict[str, object] = {
        "mrsigner": "dd" * 32,
        "isvprodid": 1,
        "isvsvn": 3,
        "qe_identity_checked": True,
    }
    fields.update(changes.pop("fields", {}))
    values: dict[str, Any] = {
        "tee": Tee.SGX,
        "measurement": bytes.fromhex("ee" * 32),
        "report_data": bytes(64),
        "debug": False,
        "tcb_status": "UpToDate",
        "advisories": (),
        "fields": fields,
    }
    values.update(changes)
    return Verdict(Claims(**values), (Check("quote_signature", True, "verifies"),))


def software_verdict(backend: str = "process") -> Verdict:
    evidence = SoftwareEvidence(backend, bytes(64), bytes(16), DIGEST)
    return verify_software(evidence, expected_report_data=bytes(64))


def policy_checks(verdict: Verdict) -> dict[str, Check]:
    return {check.name: check for check in verdict.checks if check.name.startswith("policy")}


def evaluate(policy: Policy | str, verdict: Verdict, digest: str | None = DIGEST) -> Verdict:
    if isinstance(policy, str):
        policy = parse_policy(policy)
    return policy.evaluate(verdict, workload_digest=digest)


# -- the file -----------------------------------------------------------------------------

FULL_POLICY = f"""
tees = ["snp", "tdx", "sgx"]

[insecure]
allow = true
backends = ["process"]

[snp]
measurements = ["{"ab" * 48}"]
min_tcb = {{ bootloader = 3, tee = 0, snp = 8, microcode = 115 }}
allow_debug = false
allow_migration_agent = false
require_single_socket = false
max_vmpl = 0
id_key_digests = []
author_key_digests = []
allow_unchecked_revocation = true

[tdx]
mrtd = ["{"CC" * 48}"]
rtmr = {{ 0 = "{"aa" * 48}", 3 = "{"00" * 48}" }}
min_tee_tcb_svn = "{"03" + "00" * 15}"
allow_debug = false
allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
allowed_advisories = ["INTEL-SA-00837"]

[sgx]
mrenclave = ["{"ee" * 32}"]
mrsigner = ["{"dd" * 32}"]
isv_prod_id = 1
min_isv_svn = 2
allow_debug = false
allowed_tcb_statuses = ["UpToDate"]
allowed_advisories = []

[workload]
digests = ["{DIGEST}"]
"""


def test_a_full_policy_parses() -> None:
    policy = parse_policy(FULL_POLICY)
    assert policy.tees == ("snp", "tdx", "sgx")
    assert policy.insecure.allow is True
    assert policy.insecure.backends == ("process",)
    assert policy.snp.measurements == (bytes.fromhex("ab" * 48),)
    assert policy.snp.min_tcb.microcode == 115
    assert policy.snp.min_tcb.fmc is None
    assert policy.tdx.mrtd == (bytes.fromhex("cc" * 48),)  # hex in either case
    assert dict(policy.tdx.rtmr) == {"0": bytes.fromhex("aa" * 48), "3": bytes(48)}
    assert policy.tdx.min_tee_tcb_svn == bytes.fromhex("03" + "00" * 15)
    assert policy.tdx.allowed_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert policy.sgx.isv_prod_id == 1
    assert policy.workload.digests == (DIGEST,)


def test_the_default_policy_is_strict() -> None:
    policy = default_policy()
    assert policy == Policy() == parse_policy("")
    assert policy.tees == ("snp", "tdx", "sgx")
    assert policy.insecure.allow is False
    for section in (policy.snp, policy.tdx, policy.sgx):
        assert section.allow_debug is False
    assert policy.snp.allow_migration_agent is False
    assert policy.snp.allow_unchecked_revocation is False
    assert policy.snp.max_vmpl == 0
    assert policy.tdx.allowed_tcb_statuses == ("UpToDate",)
    assert policy.sgx.allowed_tcb_statuses == ("UpToDate",)
    assert policy.workload.digests == ()


def test_a_policy_is_frozen() -> None:
    policy = default_policy()
    with pytest.raises(ValueError, match="frozen"):
        policy.tees = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.tdx.rtmr["0"] = bytes(48)  # type: ignore[index]


def test_tables_with_rules_choose_the_tees() -> None:
    """A file that pins SNP does not let in a TDX keep with any measurement."""
    assert parse_policy("[snp]\nmax_vmpl = 1").tees == ("snp",)
    assert parse_policy("[tdx]\n[sgx]").tees == ("tdx", "sgx")
    assert parse_policy("[workload]\ndigests = []").tees == ("snp", "tdx", "sgx")
    assert parse_policy('tees = ["tdx"]\n[tdx]').tees == ("tdx",)
    assert parse_policy("tees = []").tees == ()
    assert parse_policy('tees = ["tdx"]\n[snp]\nmax_vmpl = 1').tees == ("tdx",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tees = [1,,]", "p.toml: line 1, column 11: invalid TOML"),
        ("bogus = 1", "p.toml: bogus: unknown key (allowed: tees, insecure, snp,"),
        ('tees = ["snp", "tpm"]', "p.toml: tees[1]: expected 'snp', 'tdx' or 'sgx', got \"tpm\""),
        ('tees = "snp"', 'p.toml: tees: expected an array, got "snp"'),
        ("insecure = true", "p.toml: insecure: expected a table, got true"),
        ('[insecure]\nallow = "yes"', 'p.toml: insecure.allow: expected true or false, got "yes"'),
        ('[insecure]\nbackends = ["snp"]', "p.toml: insecure.backends[0]: expected 'nil',"),
        ("[snp]\nmeasurements = [1]", "p.toml: snp.measurements[0]: expected 96 hex digits"),
        ('[snp]\nmeasurements = ["abc"]', "snp.measurements[0]: expected 96 hex digits (48 bytes)"),
        (f'[snp]\nmeasurements = ["{"zz" * 48}"]', "snp.measurements[0]: expected 96 hex"),
        ("[snp]\nmin_tcb = { bootloader = 256 }", "snp.min_tcb.bootloader: expected an integer"),
        ("[snp]\nmin_tcb = { tee = -1 }", "snp.min_tcb.tee: expected an integer from 0 to 255"),
        ("[snp]\nmin_tcb = { spl = 1 }", "snp.min_tcb.spl: unknown key (allowed: bootloader,"),
        ("[snp]\nmin_tcb = { snp = 1.5 }", "snp.min_tcb.snp: expected an integer, got 1.5"),
        ("[snp]\nmax_vmpl = 4", "p.toml: snp.max_vmpl: expected an integer from 0 to 3, got 4"),
        ("[snp]\nmax_vmpl = true", "p.toml: snp.max_vmpl: expected an integer, got true"),
        ("[snp]\nallow_debug = 1", "p.toml: snp.allow_debug: expected true or false, got 1"),
        ('[snp]\nid_key_digests = ["00"]', "snp.id_key_digests[0]: expected 96 hex digits"),
        ("[snp]\nmeasurement = []", "p.toml: snp.measurement: unknown key (allowed: measurements,"),
        ('[tdx]\nmrtd = ["00"]', "p.toml: tdx.mrtd[0]: expected 96 hex digits (48 bytes)"),
        ('[tdx]\nrtmr = { 4 = "00" }', "p.toml: tdx.rtmr.4: expected '0', '1', '2' or '3'"),
        ('[tdx]\nmin_tee_tcb_svn = "00"', "p.toml: tdx.min_tee_tcb_svn: expected 32 hex digits"),
        (
            '[tdx]\nallowed_tcb_statuses = ["Revoked"]',
            'p.toml: tdx.allowed_tcb_statuses[0]: "Revoked" cannot be accepted',
        ),
        ('[tdx]\nallowed_tcb_statuses = ["Fine"]', "tdx.allowed_tcb_statuses[0]: expected one of"),
        ("[tdx]\nallowed_tcb_statuses = []", "tdx.allowed_tcb_statuses: an empty list refuses"),
        ('[tdx]\nallowed_advisories = ["SA-1"]', "tdx.allowed_advisories[0]: expected an advisory"),
        ('[sgx]\nmrenclave = ["00"]', "p.toml: sgx.mrenclave[0]: expected 64 hex digits"),
        (
            "[sgx]\nisv_prod_id = 65536",
            "p.toml: sgx.isv_prod_id: expected an integer from 0 to 65535",
        ),
        ("[sgx]\nmin_isv_svn = 1e3", "p.toml: sgx.min_isv_svn: expected an integer, got 1000.0"),
        (
            "[sgx]\nisv_prod_id = 123456789012345678901234567890",
            "sgx.isv_prod_id: expected an integer from 0 to 65535, got a very large integer",
        ),
        ('[workload]\ndigests = ["sha256:AB"]', 'workload.digests[0]: expected "sha256:" and 64'),
        ('[workload]\ndigests = ["sha256:"]', "p.toml: workload.digests[0]: expected"),
        ("[workload]\ndigest = []", "p.toml: workload.digest: unknown key (allowed: digests)"),
        ('"\\u0007bell" = 1', 'p.toml: "\\u0007bell": unknown key'),
    ],
)
def test_invalid_policies_name_the_file_key_and_expectation(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, source="p.toml")
    assert message in str(raised.value)
    assert raised.value.exit_status == 2


def test_every_problem_is_listed_one_per_line() -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy("[snp]\nmax_vmpl = 9\nallow_debug = 2\n[sgx]\nmin_isv_svn = -1", source="p")
    lines = str(raised.value).splitlines()
    assert lines == [
        "p: snp.allow_debug: expected true or false, got 2",
        "p: snp.max_vmpl: expected an integer from 0 to 3, got 9",
        "p: sgx.min_isv_svn: expected an integer from 0 to 65535, got -1",
    ] or sorted(lines) == sorted(
        [
            "p: snp.allow_debug: expected true or false, got 2",
            "p: snp.max_vmpl: expected an integer from 0 to 3, got 9",
            "p: sgx.min_isv_svn: expected an integer from 0 to 65535, got -1",
        ]
    )


def test_too_many_entries_are_refused() -> None:
    text = "[workload]\ndigests = [" + ", ".join([json.dumps(DIGEST)] * 1025) + "]"
    with pytest.raises(PolicyError, match=r"workload.digests: at most 1024 entries allowed"):
        parse_policy(text, source="p")


def test_a_policy_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    text = "# " + "x" * (256 * 1024)
    with pytest.raises(PolicyError, match="p: larger than the limit of 262144 bytes"):
        parse_policy(text, source="p")
    path = tmp_path / "big.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=f"{path}: larger than the limit"):
        load_policy(path)


def test_load_policy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[snp]\nmax_vmpl = 7\n")
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert str(raised.value) == f"{path}: snp.max_vmpl: expected an integer from 0 to 3, got 7"

    path.write_bytes(b"\xef\xbb\xbf[insecure]\nallow = true\n")  # a BOM is dropped
    assert load_policy(path).insecure.allow is True

    path.write_bytes(b"[snp]\n# \xff\n")
    with pytest.raises(PolicyError, match=f"{path}: not valid UTF-8 at byte offset 8"):
        load_policy(path)

    with pytest.raises(PolicyError, match=f"{tmp_path / 'missing.toml'}: cannot read: No such"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="cannot read: Is a directory"):
        load_policy(tmp_path)


def test_deeply_nested_toml_is_refused() -> None:
    with pytest.raises(PolicyError, match="p: invalid TOML"):
        parse_policy("x = " + "[" * 5000 + "]" * 5000, source="p")


# -- hypothesis over the parser -----------------------------------------------------------

_KEYS = [
    "tees", "insecure", "allow", "backends", "snp", "tdx", "sgx", "workload", "measurements",
    "min_tcb", "bootloader", "tee", "microcode", "fmc", "allow_debug", "allow_migration_agent",
    "require_single_socket", "max_vmpl", "id_key_digests", "author_key_digests",
    "allow_unchecked_revocation", "mrtd", "rtmr", "0", "3", "min_tee_tcb_svn",
    "allowed_tcb_statuses", "allowed_advisories", "mrenclave", "mrsigner", "isv_prod_id",
    "min_isv_svn", "digests",
]  # fmt: skip
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["snp", "tdx", "process", "UpToDate", "Revoked", "INTEL-SA-00837", DIGEST]),
    st.sampled_from(["ab" * 48, "ee" * 32, "03" * 16]),
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    assert isinstance(value, Mapping)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), _VALUES, max_size=6))
def test_generated_policies_give_a_policy_or_a_policy_error(document: dict[str, object]) -> None:
    text = "\n".join(f"{json.dumps(key)} = {_toml_value(value)}" for key, value in document.items())
    try:
        policy = parse_policy(text, source="gen.toml")
    except PolicyError as error:
        message = str(error)
    else:
        # What was accepted survives a round trip through its own dump.
        assert Policy.model_validate(policy.model_dump(mode="json")) == policy
        return
    assert all(line.startswith("gen.toml: ") for line in message.splitlines())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_policy_or_a_policy_error(text: str) -> None:
    try:
        parse_policy(text, source="x")
    except PolicyError as error:
        message = str(error)
    else:
        return
    assert message.startswith("x: ")


# -- rules: which TEEs ------------------------------------------------------------------------


def test_the_policy_checks_follow_the_verifiers_and_are_all_listed() -> None:
    verdict = snp_verdict()
    evaluated = evaluate("[snp]\nallow_unchecked_revocation = true", verdict)
    assert evaluated.checks[: len(verdict.checks)] == verdict.checks
    assert [check.name for check in evaluated.checks[len(verdict.checks) :]] == [
        "policy_tee_allowed",
        "policy_measurement",
        "policy_min_tcb",
        "policy_debug",
        "policy_migration_agent",
        "policy_single_socket",
        "policy_vmpl",
        "policy_id_key",
        "policy_author_key",
        "policy_revocation",
        "policy_workload_digest",
    ]
    assert evaluated.accepted


def test_the_tdx_and_sgx_checks() -> None:
    tdx = evaluate(default_policy(), tdx_verdict())
    assert [check.name for check in tdx.checks[1:]] == [
        "policy_tee_allowed",
        "policy_measurement",
        "policy_rtmr",
        "policy_min_tcb",
        "policy_debug",
        "policy_tcb_status",
        "policy_advisories",
        "policy_qe_identity",
        "policy_workload_digest",
    ]
    assert tdx.accepted
    sgx = evaluate(default_policy(), sgx_verdict())
    assert [check.name for check in sgx.checks[1:]] == [
        "policy_tee_allowed",
        "policy_measurement",
        "policy_signer",
        "policy_product",
        "policy_min_tcb",
        "policy_debug",
        "policy_tcb_status",
        "policy_advisories",
        "policy_qe_identity",
        "policy_workload_digest",
    ]
    assert sgx.accepted


def test_a_tee_left_out_is_refused_and_every_other_check_still_listed() -> None:
    evaluated = evaluate('tees = ["sgx"]', tdx_verdict())
    assert [check.name for check in evaluated.failures] == ["policy_tee_allowed"]
    assert evaluated.failures[0].detail == "tdx is not accepted (tees: sgx)"
    assert len(policy_checks(evaluated)) == 9
    assert not evaluate("tees = []", snp_verdict()).accepted


def test_a_verdict_without_claims_is_refused() -> None:
    verdict = Verdict(None, (Check("parse", False, "truncated"),))
    evaluated = default_policy().evaluate(verdict, workload_digest=DIGEST)
    assert evaluated.checks[-1] == Check(
        "policy", False, "the evidence could not be read: no claims to evaluate"
    )


def test_a_failed_verification_stays_refused() -> None:
    verdict = Verdict(tdx_verdict().claims, (Check("quote_signature", False, "does not verify"),))
    evaluated = evaluate(default_policy(), verdict)
    assert not evaluated.accepted
    assert [check.name for check in evaluated.failures] == ["quote_signature"]


# -- rules: software evidence -----------------------------------------------------------------


def test_software_evidence_is_refused_by_default() -> None:
    evaluated = evaluate(default_policy(), software_verdict())
    assert not evaluated.accepted
    (failure,) = evaluated.failures
    assert failure.name == "policy_insecure_allowed"
    assert "no hardware protects this keep" in failure.detail
    assert [check.name for check in evaluated.checks] == [
        "insecure_evidence",
        "report_data",
        "policy_insecure_allowed",
        "policy_insecure_backend",
        "policy_workload_digest",
    ]


def test_software_evidence_is_accepted_only_when_allowed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = parse_policy('[insecure]\nallow = true\nbackends = ["process"]')
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        evaluated = evaluate(policy, software_verdict("process"))
    assert evaluated.accepted
    assert policy_checks(evaluated)["policy_insecure_allowed"].detail.startswith(
        "software evidence accepted by insecure.allow = true"
    )
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "software evidence from a process keep" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        refused = evaluate(policy, software_verdict("nil"))
    assert [check.name for check in refused.failures] == ["policy_insecure_backend"]
    assert "backend nil is not in insecure.backends (process)" in refused.failures[0].detail
    assert not caplog.records


def test_backends_without_allow_do_not_accept() -> None:
    evaluated = evaluate('[insecure]\nbackends = ["process"]', software_verdict())
    assert [check.name for check in evaluated.failures] == ["policy_insecure_allowed"]


# -- rules: SNP, on the real reports ------------------------------------------------------------

REVOCATION_OFF = "allow_unchecked_revocation = true\n"


def test_snp_measurement() -> None:
    verdict = snp_verdict()
    assert verdict.claims is not None
    measurement = verdict.claims.measurement.hex()
    listed = evaluate(f'[snp]\n{REVOCATION_OFF}measurements = ["{measurement}"]', verdict)
    assert listed.accepted
    assert "is listed" in policy_checks(listed)["policy_measurement"].detail
    other = evaluate(f'[snp]\n{REVOCATION_OFF}measurements = ["{"00" * 48}"]', verdict)
    assert [check.name for check in other.failures] == ["policy_measurement"]
    assert "is not one of the 1 listed" in other.failures[0].detail


@pytest.mark.parametrize("name", ["milan-virtee", "milan-trustee"])
def test_snp_min_tcb_against_the_vectors_reported_tcb(name: str) -> None:
    """PROVENANCE: reported TCB bl 3 tee 0 snp 8 ucode 115."""
    verdict = snp_verdict(name)
    exact = "min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }"
    passed = evaluate(f"[snp]\n{REVOCATION_OFF}{exact}", verdict)
    assert passed.accepted
    assert policy_checks(passed)["policy_min_tcb"].detail == (
        "reported TCB bootloader 3, tee 0, snp 8, microcode 115 meets snp.min_tcb"
    )
    for component, value, reason in [
        ("bootloader", 4, "bootloader 3 < 4"),
        ("tee", 1, "tee 0 < 1"),
        ("snp", 9, "snp 8 < 9"),
        ("microcode", 116, "microcode 115 < 116"),
        ("fmc", 0, "fmc missing"),
    ]:
        failed = evaluate(f"[snp]\n{REVOCATION_OFF}min_tcb = {{ {component} = {value} }}", verdict)
        assert [check.name for check in failed.failures] == ["policy_min_tcb"]
        assert reason in failed.failures[0].detail


def test_snp_debug(caplog: pytest.LogCaptureFixture) -> None:
    verdict = snp_verdict()  # policy 0x30000: DEBUG clear
    assert policy_checks(evaluate(f"[snp]\n{REVOCATION_OFF}", verdict))["policy_debug"].passed
    debuggable = with_claims(verdict, debug=True, fields={"debug_allowed": True})
    refused = evaluate(f"[snp]\n{REVOCATION_OFF}", debuggable)
    assert [check.name for check in refused.failures] == ["policy_debug"]
    assert "the host can read and change the keep's memory" in refused.failures[0].detail
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        allowed = evaluate(f"[snp]\n{REVOCATION_OFF}allow_debug = true", debuggable)
    assert allowed.accepted
    assert "accepted by snp.allow_debug = true" in policy_checks(allowed)["policy_debug"].detail
    assert any("debuggable snp keep" in record.getMessage() for record in caplog.records)


def test_snp_migration_agent(caplog: pytest.LogCaptureFixture) -> None:
    verdict = snp_verdict("milan-trustee")  # policy 0x3001f: MIGRATE_MA clear
    assert policy_checks(evaluate(f"[snp]\n{REVOCATION_OFF}", verdict))[
        "policy_migration_agent"
    ].passed
    claims = verdict.claims
    assert claims is not None
    policy_bits = dict(claims.fields["policy"])  # type: ignore[call-overload]
    policy_bits["migrate_ma_allowed"] = True
    migratable = with_claims(verdict, fields={"policy": policy_bits})
    refused = evaluate(f"[snp]\n{REVOCATION_OFF}", migratable)
    assert [check.name for check in refused.failures] == ["policy_migration_agent"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        allowed = evaluate(f"[snp]\n{REVOCATION_OFF}allow_migration_agent = true", migratable)
    assert allowed.accepted
    assert any("migration agent" in record.getMessage() for record in caplog.records)


def test_snp_single_socket() -> None:
    verdict = snp_verdict()  # SINGLE_SOCKET (bit 20) clear in 0x30000
    refused = evaluate(f"[snp]\n{REVOCATION_OFF}require_single_socket = true", verdict)
    assert [check.name for check in refused.failures] == ["policy_single_socket"]
    claims = verdict.claims
    assert claims is not None
    bits = dict(claims.fields["policy"])  # type: ignore[call-overload]
    bits["single_socket_required"] = True
    single = with_claims(verdict, fields={"policy": bits})
    assert evaluate(f"[snp]\n{REVOCATION_OFF}require_single_socket = true", single).accepted


def test_snp_vmpl() -> None:
    verdict = snp_verdict()  # VMPL 0
    assert policy_checks(evaluate(f"[snp]\n{REVOCATION_OFF}", verdict))["policy_vmpl"].detail == (
        "VMPL 0 <= max_vmpl 0"
    )
    at_two = with_claims(verdict, fields={"vmpl": 2})
    refused = evaluate(f"[snp]\n{REVOCATION_OFF}", at_two)
    assert [check.name for check in refused.failures] == ["policy_vmpl"]
    assert refused.failures[0].detail == "VMPL 2 > max_vmpl 0"
    assert evaluate(f"[snp]\n{REVOCATION_OFF}max_vmpl = 2", at_two).accepted


def test_snp_signer_keys() -> None:
    verdict = snp_verdict()  # no ID block: both digests are zero, AUTHOR_KEY_EN clear
    zeros = f'"{"00" * 48}"'
    assert evaluate(f"[snp]\n{REVOCATION_OFF}id_key_digests = [{zeros}]", verdict).accepted
    other = evaluate(f'[snp]\n{REVOCATION_OFF}id_key_digests = ["{"11" * 48}"]', verdict)
    assert [check.name for check in other.failures] == ["policy_id_key"]
    author = evaluate(f"[snp]\n{REVOCATION_OFF}author_key_digests = [{zeros}]", verdict)
    assert [check.name for check in author.failures] == ["policy_author_key"]
    assert "AUTHOR_KEY_EN 0" in author.failures[0].detail
    signed = with_claims(verdict, fields={"author_key_en": True, "author_key_digest": "22" * 48})
    listed = f'author_key_digests = ["{"22" * 48}"]'
    assert evaluate(f"[snp]\n{REVOCATION_OFF}{listed}", signed).accepted


def test_snp_revocation(caplog: pytest.LogCaptureFixture) -> None:
    verdict = snp_verdict()  # verified without a CRL
    refused = evaluate(default_policy(), verdict)
    assert [check.name for check in refused.failures] == ["policy_revocation"]
    assert "give AMD's CRL" in refused.failures[0].detail
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert evaluate(f"[snp]\n{REVOCATION_OFF}", verdict).accepted
    assert any("revocation" in record.getMessage() for record in caplog.records)
    checked = with_claims(verdict, fields={"revocation_checked": True})
    assert evaluate(default_policy(), checked).accepted


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_qe_identity_unchecked(tee: str, caplog: pytest.LogCaptureFixture) -> None:
    """A quote verified without Intel's QE Identity (as Enarx sends them) is
    refused unless the policy accepts that, naming the setting."""
    make = tdx_verdict if tee == "tdx" else sgx_verdict
    unchecked = make(fields={"qe_identity_checked": False})
    refused = evaluate(default_policy(), unchecked)
    assert [check.name for check in refused.failures] == ["policy_qe_identity"]
    assert f"{tee}.allow_unchecked_qe_identity" in refused.failures[0].detail
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        allowed = evaluate(f"[{tee}]\nallow_unchecked_qe_identity = true", unchecked)
    assert allowed.accepted
    assert any("QE Identity" in record.getMessage() for record in caplog.records)
    assert evaluate(default_policy(), make()).accepted


def test_snp_claims_missing_fields_fail_rather_than_pass() -> None:
    verdict = snp_verdict()
    claims = verdict.claims
    assert claims is not None
    bare = Verdict(
        Claims(Tee.SNP, claims.measurement, claims.report_data, claims.debug, fields={}),
        verdict.checks,
    )
    failures = {check.name for check in evaluate(default_policy(), bare).failures}
    assert failures == {
        "policy_min_tcb",
        "policy_migration_agent",
        "policy_single_socket",
        "policy_vmpl",
        "policy_revocation",
    }


# -- rules: TDX ------------------------------------------------------------------------------


def test_tdx_mrtd_and_rtmr() -> None:
    verdict = tdx_verdict()
    assert evaluate(f'[tdx]\nmrtd = ["{"cc" * 48}"]', verdict).accepted
    refused = evaluate(f'[tdx]\nmrtd = ["{"dd" * 48}"]', verdict)
    assert [check.name for check in refused.failures] == ["policy_measurement"]
    assert refused.failures[0].detail.startswith("MRTD cccccccccccccccc... is not one")

    rtmr = f'[tdx]\nrtmr = {{ 0 = "{"aa" * 48}", 1 = "{"bb" * 48}" }}'
    assert policy_checks(evaluate(rtmr, verdict))["policy_rtmr"].detail == (
        "RTMR 0, 1 hold the values in tdx.rtmr"
    )
    wrong = evaluate(f'[tdx]\nrtmr = {{ 2 = "{"aa" * 48}" }}', verdict)
    assert [check.name for check in wrong.failures] == ["policy_rtmr"]
    assert wrong.failures[0].detail.startswith("RTMR2 is 0000000000000000...")
    missing = evaluate(
        f'[tdx]\nrtmr = {{ 0 = "{"aa" * 48}" }}', tdx_verdict(fields={"rtmr0": None})
    )
    assert "RTMR0 is missing" in missing.failures[0].detail


def test_tdx_min_tee_tcb_svn() -> None:
    verdict = tdx_verdict()  # TEE_TCB_SVN 05 01 00...
    assert evaluate(f'[tdx]\nmin_tee_tcb_svn = "{"0501" + "00" * 14}"', verdict).accepted
    low = evaluate(f'[tdx]\nmin_tee_tcb_svn = "{"0502" + "00" * 14}"', verdict)
    assert [check.name for check in low.failures] == ["policy_min_tcb"]
    assert low.failures[0].detail.endswith("at byte 1")
    assert not evaluate(
        f'[tdx]\nmin_tee_tcb_svn = "{"00" * 16}"', tdx_verdict(fields={"tee_tcb_svn": None})
    ).accepted


def test_tdx_debug() -> None:
    debuggable = tdx_verdict(debug=True)
    refused = evaluate("[tdx]", debuggable)
    assert [check.name for check in refused.failures] == ["policy_debug"]
    assert "TD_ATTRIBUTES.DEBUG" in refused.failures[0].detail
    assert evaluate("[tdx]\nallow_debug = true", debuggable).accepted


@pytest.mark.parametrize("status", TCB_STATUSES)
def test_tcb_status(status: str, caplog: pytest.LogCaptureFixture) -> None:
    verdict = tdx_verdict(tcb_status=status)
    default = evaluate("[tdx]", verdict)
    assert default.accepted == (status == "UpToDate")
    if status != "UpToDate":
        (failure,) = default.failures
        assert failure.name == "policy_tcb_status"
        assert (
            f"TCB status {status} is not in tdx.allowed_tcb_statuses (UpToDate)" in failure.detail
        )
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            allowed = evaluate(f'[tdx]\nallowed_tcb_statuses = ["{status}"]', verdict)
        assert allowed.accepted
        assert any(status in record.getMessage() for record in caplog.records)


def test_tcb_status_unknown_or_revoked_is_refused() -> None:
    for status in ("Revoked", None, "SomethingNew"):
        refused = evaluate(
            f"[sgx]\nallowed_tcb_statuses = {json.dumps(list(TCB_STATUSES))}",
            sgx_verdict(tcb_status=status),
        )
        assert [check.name for check in refused.failures] == ["policy_tcb_status"]


def test_advisories(caplog: pytest.LogCaptureFixture) -> None:
    affected = tdx_verdict(
        tcb_status="SWHardeningNeeded", advisories=("INTEL-SA-00837", "INTEL-SA-00615")
    )
    statuses = 'allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n'
    refused = evaluate(f'[tdx]\n{statuses}allowed_advisories = ["INTEL-SA-00837"]', affected)
    assert [check.name for check in refused.failures] == ["policy_advisories"]
    assert refused.failures[0].detail == (
        "advisories not in tdx.allowed_advisories: INTEL-SA-00615"
    )
    both = 'allowed_advisories = ["INTEL-SA-00837", "INTEL-SA-00615"]'
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        allowed = evaluate(f"[tdx]\n{statuses}{both}", affected)
    assert allowed.accepted
    assert any("INTEL-SA-00615" in record.getMessage() for record in caplog.records)


# -- rules: SGX ------------------------------------------------------------------------------


def test_sgx_rules() -> None:
    verdict = sgx_verdict()
    assert evaluate(
        f'[sgx]\nmrenclave = ["{"ee" * 32}"]\nmrsigner = ["{"dd" * 32}"]\n'
        "isv_prod_id = 1\nmin_isv_svn = 3",
        verdict,
    ).accepted
    for rule, name in [
        (f'mrenclave = ["{"00" * 32}"]', "policy_measurement"),
        (f'mrsigner = ["{"00" * 32}"]', "policy_signer"),
        ("isv_prod_id = 2", "policy_product"),
        ("min_isv_svn = 4", "policy_min_tcb"),
    ]:
        refused = evaluate(f"[sgx]\n{rule}", verdict)
        assert [check.name for check in refused.failures] == [name], rule
    assert evaluate("[sgx]\nmin_isv_svn = 4", sgx_verdict()).failures[0].detail == (
        "ISVSVN 3 < min_isv_svn 4"
    )
    debuggable = sgx_verdict(debug=True)
    assert [check.name for check in evaluate("[sgx]", debuggable).failures] == ["policy_debug"]
    assert evaluate("[sgx]\nallow_debug = true", debuggable).accepted


# -- rules: the workload ------------------------------------------------------------------------


def test_workload_digest() -> None:
    policy = f'[workload]\ndigests = ["{DIGEST}"]'
    verdict = tdx_verdict()
    assert policy_checks(evaluate(policy, verdict))["policy_workload_digest"].passed
    other = evaluate(policy, verdict, OTHER_DIGEST)
    assert [check.name for check in other.failures] == ["policy_workload_digest"]
    assert "is not in workload.digests" in other.failures[0].detail
    unknown = evaluate(policy, verdict, None)
    assert "the verifier bound none" in unknown.failures[0].detail
    anything = evaluate(default_policy(), verdict, None)
    assert policy_checks(anything)["policy_workload_digest"].detail == (
        "any workload (not bound; no workload.digests)"
    )


# -- rules on real DCAP verdicts ------------------------------------------------------------


def real_tdx_verdict() -> Verdict:
    """dcap-qvl-uptodate: PROVENANCE says UpToDate with its own collateral."""
    from wasmkeep.attestation.dcap import parse_quote, parse_qvl_collateral, verify_quote

    folder = ASSETS / "tdx" / "dcap-qvl-uptodate"
    verdict = verify_quote(
        parse_quote((folder / "quote.dat").read_bytes()),
        parse_qvl_collateral((folder / "collateral.json").read_bytes()),
        now=datetime.datetime(2025, 6, 19, 11, tzinfo=datetime.UTC),
    )
    assert verdict.accepted, verdict.failures
    return verdict


def test_real_tdx_verdict_against_every_tdx_rule() -> None:
    verdict = real_tdx_verdict()
    claims = verdict.claims
    assert claims is not None and claims.tcb_status == "UpToDate"
    fields = claims.fields
    mrtd = claims.measurement.hex()
    svn = str(fields["tee_tcb_svn"])
    exact = (
        f'[tdx]\nmrtd = ["{mrtd}"]\n'
        f'rtmr = {{ 0 = "{fields["rtmr0"]}", 3 = "{fields["rtmr3"]}" }}\n'
        f'min_tee_tcb_svn = "{svn}"\n'
    )
    passed = evaluate(exact, verdict)
    assert passed.accepted, passed.failures
    assert policy_checks(passed)["policy_tcb_status"].detail == "TCB status UpToDate"

    first = int(svn[:2], 16)
    higher = f"{first + 1:02x}" + svn[2:]
    for rule, name in [
        (f'mrtd = ["{"00" * 48}"]', "policy_measurement"),
        (f'rtmr = {{ 1 = "{"00" * 48}" }}', "policy_rtmr"),
        (f'min_tee_tcb_svn = "{higher}"', "policy_min_tcb"),
        ('tees = ["snp"]', "policy_tee_allowed"),
    ]:
        text = rule if rule.startswith("tees") else f"[tdx]\n{rule}"
        refused = evaluate(text, verdict)
        assert [check.name for check in refused.failures] == [name], rule


def test_real_sgx_verdict_is_a_debug_enclave() -> None:
    """The Occlum quote comes from a debug enclave: verification and policy both
    refuse it; the policy's other SGX rules read its real fields."""
    from wasmkeep.attestation.dcap import Collateral, parse_quote, verify_quote

    quote = parse_quote((ASSETS / "sgx/occlum-trustee/quote.dat").read_bytes())
    verdict = verify_quote(quote, Collateral(), now=NOW)
    claims = verdict.claims
    assert claims is not None and claims.tee is Tee.SGX and claims.debug
    signer = str(claims.fields["mrsigner"])
    product = claims.fields["isvprodid"]
    text = (
        f'[sgx]\nmrenclave = ["{claims.measurement.hex()}"]\nmrsigner = ["{signer}"]\n'
        f"isv_prod_id = {product}\nallow_debug = true\n"
        'allowed_tcb_statuses = ["UpToDate"]\n'
    )
    checks = policy_checks(evaluate(text, verdict))
    for name in ("policy_measurement", "policy_signer", "policy_product", "policy_debug"):
        assert checks[name].passed, checks[name]
    assert not checks["policy_tcb_status"].passed  # no collateral: no TCB status
    assert not policy_checks(evaluate("[sgx]", verdict))["policy_debug"].passed


def test_the_policy_knows_every_status_the_dcap_verifier_ends_in() -> None:
    """The policy's list is the verifier's TCB Info statuses, without Revoked
    (never acceptable), plus TDX 1.5's relaunch refinements."""
    from wasmkeep.attestation import dcap, policy

    relaunch = {"TDRelaunchAdvised", "TDRelaunchAdvisedConfigurationNeeded"}
    assert set(policy.TCB_STATUSES) == (dcap.TCB_STATUSES - {"Revoked"}) | relaunch
