"""The operator's attestation policy: which keeps to trust, as a checked TOML file.

Verification (:mod:`.snp`, :mod:`.dcap`, :mod:`.software`) says what the
evidence proves; a :class:`Policy` says whether that is good enough. It adds
one check per rule to the verdict, so the final verdict lists every check made,
verification's and the policy's, each with its reason::

    # Which hardware TEEs are accepted. Default: the TEEs that have a table
    # below, or all three when none has one.
    tees = ["snp", "tdx"]

    [insecure]                 # software evidence (nil, process, vm keeps)
    allow = false              # true accepts keeps that no hardware protects
    backends = ["process"]     # which of "nil", "process", "vm" (default: all)

    [snp]
    measurements = ["<96 hex digits>"]    # launch MEASUREMENT; empty: any
    min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }  # + fmc (Turin)
    allow_debug = false                   # guest policy DEBUG
    allow_migration_agent = false         # guest policy MIGRATE_MA
    require_single_socket = false         # guest policy SINGLE_SOCKET must be set
    max_vmpl = 0                          # the VMPL that requested the report
    id_key_digests = []                   # ID_KEY_DIGEST (SHA-384); empty: any
    author_key_digests = []               # AUTHOR_KEY_DIGEST; empty: any
    allow_unchecked_revocation = false    # true: accept without AMD's CRL

    [tdx]
    mrtd = ["<96 hex digits>"]            # empty: any
    rtmr = { 0 = "<96 hex digits>" }      # RTMR index -> value; absent: any
    min_tee_tcb_svn = "<32 hex digits>"   # each byte at least this
    allow_debug = false                   # TD_ATTRIBUTES.DEBUG
    allowed_tcb_statuses = ["UpToDate"]   # from the TCB Info collateral
    allowed_advisories = []               # e.g. "INTEL-SA-00837"
    allow_unchecked_qe_identity = false   # true: accept without a QE Identity

    [sgx]
    mrenclave = []                        # 64 hex digits each; empty: any
    mrsigner = []
    isv_prod_id = 0                       # absent: any
    min_isv_svn = 0
    allow_debug = false                   # ATTRIBUTES.DEBUG
    allowed_tcb_statuses = ["UpToDate"]
    allowed_advisories = []
    allow_unchecked_qe_identity = false

    [workload]
    digests = ["sha256:<64 hex digits>"]  # the workloads accepted; empty: any

Every relaxation is named with ``allow``: a rule that lets in less protected
keeps (``insecure.allow``, ``allow_debug``, ``allow_migration_agent``, a TCB
status other than UpToDate, an advisory) logs a warning each time it is what
made a check pass. Without a file, :func:`default_policy` applies: every
hardware TEE with the defaults above (no debug, no migration agent, VMPL 0,
SNP certificates checked against AMD's CRL, Intel quotes against a QE
Identity, UpToDate only), software evidence refused.

What is promised: :func:`parse_policy` and :func:`load_policy` return a
:class:`Policy` or raise :class:`~wasmkeep.attestation.errors.PolicyError`, for
any input whatsoever, naming the file, the key path and what was expected. A
Policy is checked when built, so code holding one may trust it.
:meth:`Policy.evaluate` never raises for a verdict: claims it cannot read give
failed checks.

The workload digest :meth:`Policy.evaluate` is given must be the one the
verifier bound through report_data
(:func:`wasmkeep.attestation.software.report_data`); the policy cannot tell.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from wasmkeep.attestation.errors import PolicyError
from wasmkeep.attestation.limits import DEFAULT_ATTESTATION_LIMITS
from wasmkeep.attestation.verdict import Check, Claims, Tee, Verdict
from wasmkeep.printable import shown
from wasmkeep.tomlfile import describe, format_loc, parse_toml, problems_error, read_toml_text

__all__ = [
    "TCB_STATUSES",
    "InsecurePolicy",
    "Policy",
    "SgxPolicy",
    "SnpPolicy",
    "SnpTcb",
    "TdxPolicy",
    "WorkloadPolicy",
    "default_policy",
    "load_policy",
    "parse_policy",
]

_LOG = logging.getLogger(__name__)
_LIMITS = DEFAULT_ATTESTATION_LIMITS

#: The TCB statuses a DCAP verification can end in that a policy may accept
#: ("Revoked" never). The TDRelaunchAdvised ones are TDX 1.5's: the platform is
#: updated and a relaunch of the TD would make it current (QVL 4.1.2.4.17).
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
)
_UP_TO_DATE = "UpToDate"
_HARDWARE_TEES = ("snp", "tdx", "sgx")


# -- value types ----------------------------------------------------------------------


def _problem(detail: str) -> PydanticCustomError:
    """A complete message for the key it is raised at."""
    return PydanticCustomError("problem", "{detail}", {"detail": detail})


def _hex(size: int) -> Callable[[object], bytes]:
    def convert(value: object) -> bytes:
        if isinstance(value, bytes):  # built from code: already bytes
            text = value.hex()
        elif isinstance(value, str):
            text = value
        else:
            raise _problem(f"expected {2 * size} hex digits, got {describe(value)}")
        if len(text) != 2 * size or not re.fullmatch(r"[0-9a-fA-F]*", text):
            raise _problem(
                f"expected {2 * size} hex digits ({size} bytes), got {describe(value)}"
                + (f" ({len(text)} characters)" if len(text) != 2 * size else "")
            )
        return bytes.fromhex(text)

    return convert


_Hex16: TypeAlias = Annotated[
    bytes, BeforeValidator(_hex(16)), PlainSerializer(bytes.hex, return_type=str)
]
_Hex32: TypeAlias = Annotated[
    bytes, BeforeValidator(_hex(32)), PlainSerializer(bytes.hex, return_type=str)
]
_Hex48: TypeAlias = Annotated[
    bytes, BeforeValidator(_hex(48)), PlainSerializer(bytes.hex, return_type=str)
]


def _check_workload_digest(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise _problem(f'expected "sha256:" and 64 lowercase hex digits, got {describe(value)}')
    return value


def _check_advisory(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"INTEL-SA-[0-9]{5}", value):
        raise _problem(f'expected an advisory ID such as "INTEL-SA-00837", got {describe(value)}')
    return value


def _check_tcb_status(value: object) -> str:
    if value == "Revoked":
        raise _problem('"Revoked" cannot be accepted: the platform\'s keys are revoked')
    if not isinstance(value, str) or value not in TCB_STATUSES:
        raise _problem(f"expected one of {', '.join(TCB_STATUSES)}, got {describe(value)}")
    return value


_Digest: TypeAlias = Annotated[str, BeforeValidator(_check_workload_digest)]
_Advisory: TypeAlias = Annotated[str, BeforeValidator(_check_advisory)]
_TcbStatus: TypeAlias = Annotated[str, BeforeValidator(_check_tcb_status)]
_Svn: TypeAlias = Annotated[StrictInt, Field(ge=0, le=255)]


def _check_statuses(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise _problem(
            "an empty list refuses every quote; to refuse this TEE, leave it out of `tees`"
        )
    return value


# TOML arrays, at most max_policy_entries long, held as tuples.
_MAX = _LIMITS.max_policy_entries
_Hex32List: TypeAlias = Annotated[tuple[_Hex32, ...], Field(max_length=_MAX)]
_Hex48List: TypeAlias = Annotated[tuple[_Hex48, ...], Field(max_length=_MAX)]
_DigestList: TypeAlias = Annotated[tuple[_Digest, ...], Field(max_length=_MAX)]
_AdvisoryList: TypeAlias = Annotated[tuple[_Advisory, ...], Field(max_length=_MAX)]


def _freeze(value: Mapping[str, bytes]) -> Mapping[str, bytes]:
    return MappingProxyType(dict(value))


def _hex_table(value: Mapping[str, bytes]) -> dict[str, str]:
    return {key: item.hex() for key, item in value.items()}


#: RTMR index ("0" to "3", as TOML keys are strings) -> the value it must hold.
_RtmrTable: TypeAlias = Annotated[
    Mapping[Literal["0", "1", "2", "3"], _Hex48],
    AfterValidator(_freeze),
    PlainSerializer(_hex_table, return_type=dict[str, str]),
]
_StatusList: TypeAlias = Annotated[
    tuple[_TcbStatus, ...], Field(max_length=_MAX), AfterValidator(_check_statuses)
]


class _Model(BaseModel, frozen=True):
    """Frozen and closed: every key known, no value changes after the checks."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


# -- the sections ----------------------------------------------------------------------


class InsecurePolicy(_Model, frozen=True):
    """Whether software evidence is accepted: keeps that no hardware protects."""

    #: True accepts software evidence (a warning is logged each time it is).
    allow: StrictBool = False
    #: The software backends accepted when `allow` is true.
    backends: tuple[Literal["nil", "process", "vm"], ...] = ("nil", "process", "vm")


class SnpTcb(_Model, frozen=True):
    """The lowest TCB accepted, component by component (REPORTED_TCB)."""

    bootloader: _Svn = 0
    tee: _Svn = 0
    snp: _Svn = 0
    microcode: _Svn = 0
    #: Turin and later only: a report without an FMC SVN fails a set minimum.
    fmc: _Svn | None = None


class SnpPolicy(_Model, frozen=True):
    """Rules for AMD SEV-SNP reports (SEV-SNP ABI spec, 7.3 and 4.3)."""

    measurements: _Hex48List = ()
    min_tcb: SnpTcb = Field(default_factory=SnpTcb)
    allow_debug: StrictBool = False
    allow_migration_agent: StrictBool = False
    require_single_socket: StrictBool = False
    max_vmpl: Annotated[StrictInt, Field(ge=0, le=3)] = 0
    id_key_digests: _Hex48List = ()
    author_key_digests: _Hex48List = ()
    #: Accept a report whose certificates were not checked against AMD's CRL.
    allow_unchecked_revocation: StrictBool = False


class TdxPolicy(_Model, frozen=True):
    """Rules for Intel TDX quotes (TDX DCAP Quoting Library API, A.3)."""

    mrtd: _Hex48List = ()
    rtmr: _RtmrTable = Field(default_factory=lambda: MappingProxyType({}))
    min_tee_tcb_svn: _Hex16 | None = None
    allow_debug: StrictBool = False
    allowed_tcb_statuses: _StatusList = (_UP_TO_DATE,)
    allowed_advisories: _AdvisoryList = ()
    #: Accept a quote whose QE was checked only against Intel's pinned signer,
    #: without QE Identity collateral (so the QE's own TCB is unknown).
    allow_unchecked_qe_identity: StrictBool = False


class SgxPolicy(_Model, frozen=True):
    """Rules for Intel SGX quotes (SGX DCAP Quote Library API, A.4)."""

    mrenclave: _Hex32List = ()
    mrsigner: _Hex32List = ()
    isv_prod_id: Annotated[StrictInt, Field(ge=0, le=0xFFFF)] | None = None
    min_isv_svn: Annotated[StrictInt, Field(ge=0, le=0xFFFF)] = 0
    allow_debug: StrictBool = False
    allowed_tcb_statuses: _StatusList = (_UP_TO_DATE,)
    allowed_advisories: _AdvisoryList = ()
    #: Accept a quote whose QE was checked only against Intel's pinned signer,
    #: without QE Identity collateral (so the QE's own TCB is unknown).
    allow_unchecked_qe_identity: StrictBool = False


class WorkloadPolicy(_Model, frozen=True):
    """The workloads accepted, on any keep."""

    #: ``sha256:<hex>`` digests; empty: any workload.
    digests: _DigestList = ()


# -- the policy -------------------------------------------------------------------------


class Policy(_Model, frozen=True):
    """A checked attestation policy; :meth:`evaluate` applies it to a verdict."""

    #: The hardware TEEs accepted (software evidence: see `insecure`).
    tees: tuple[Literal["snp", "tdx", "sgx"], ...] = ("snp", "tdx", "sgx")
    insecure: InsecurePolicy = Field(default_factory=InsecurePolicy)
    snp: SnpPolicy = Field(default_factory=SnpPolicy)
    tdx: TdxPolicy = Field(default_factory=TdxPolicy)
    sgx: SgxPolicy = Field(default_factory=SgxPolicy)
    workload: WorkloadPolicy = Field(default_factory=WorkloadPolicy)

    @model_validator(mode="before")
    @classmethod
    def _default_tees(cls, data: Any) -> Any:
        # A file that sets rules for some TEEs accepts those: one that pins the
        # SNP measurement must not let in a TDX keep with any measurement at all.
        # (An explicit `tees` may leave out a TEE whose table stays, to turn it
        # off for a while.)
        if isinstance(data, dict) and "tees" not in data:
            configured = [tee for tee in _HARDWARE_TEES if tee in data]
            if configured:
                data = {**data, "tees": configured}
        return data

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, verdict: Verdict, *, workload_digest: str | None) -> Verdict:
        """`verdict` with one check per rule of this policy appended.

        The rules depend on the TEE; each is listed whether it passes or fails
        (a rule without configured values passes, saying so), so the result
        shows everything that was decided. `workload_digest` is the digest the
        verifier bound through report_data, or None if it bound none.
        """
        claims = verdict.claims
        if claims is None:
            return verdict.plus(
                [Check("policy", False, "the evidence could not be read: no claims to evaluate")]
            )
        if claims.tee is Tee.SOFTWARE:
            checks = self._software(claims)
        else:
            checks = [self._tee_allowed(claims.tee)]
            if claims.tee is Tee.SNP:
                checks += self._snp(claims)
            elif claims.tee is Tee.TDX:
                checks += self._tdx(claims)
            else:
                checks += self._sgx(claims)
        checks.append(self._workload(workload_digest))
        return verdict.plus(checks)

    def _tee_allowed(self, tee: Tee) -> Check:
        listed = ", ".join(self.tees) or "none"
        if tee.value in self.tees:
            return Check("policy_tee_allowed", True, f"{tee.value} is accepted (tees: {listed})")
        return Check("policy_tee_allowed", False, f"{tee.value} is not accepted (tees: {listed})")

    def _software(self, claims: Claims) -> list[Check]:
        backend = claims.fields.get("backend")
        backend_text = backend if isinstance(backend, str) else "unknown"
        if not self.insecure.allow:
            allowed = Check(
                "policy_insecure_allowed",
                False,
                "software evidence is refused: no hardware protects this keep "
                "(a policy with [insecure] allow = true accepts it)",
            )
        else:
            allowed = Check(
                "policy_insecure_allowed",
                True,
                "software evidence accepted by insecure.allow = true: "
                "no hardware protects this keep",
            )
        if backend_text in self.insecure.backends:
            backend_check = Check(
                "policy_insecure_backend",
                True,
                f"backend {backend_text} is in insecure.backends",
            )
        else:
            backend_check = Check(
                "policy_insecure_backend",
                False,
                f"backend {backend_text} is not in insecure.backends "
                f"({', '.join(self.insecure.backends) or 'none'})",
            )
        if allowed.passed and backend_check.passed:
            _LOG.warning(
                "policy accepts software evidence from a %s keep (insecure.allow = true): "
                "no hardware protects it",
                backend_text,
            )
        return [allowed, backend_check]

    def _snp(self, claims: Claims) -> list[Check]:
        rules = self.snp
        fields = _Fields(claims)
        checks = [
            _one_of("policy_measurement", "MEASUREMENT", claims.measurement, rules.measurements)
        ]

        # Minimum TCB, component by component (REPORTED_TCB: the TCB the VCEK
        # that signed the report was derived for).
        tcb = fields.table("reported_tcb")
        if tcb is None:
            checks.append(Check("policy_min_tcb", False, "the claims lack reported_tcb"))
        else:
            checks.append(_min_tcb_check(tcb, rules.min_tcb))

        checks.append(
            _debug_check(claims.debug, rules.allow_debug, "snp", "the guest policy allows DEBUG")
        )

        policy = fields.table("policy")
        migrate = policy.get("migrate_ma_allowed") if policy is not None else None
        if not isinstance(migrate, bool):
            checks.append(Check("policy_migration_agent", False, "the claims lack policy bits"))
        elif not migrate:
            checks.append(
                Check("policy_migration_agent", True, "the guest policy forbids a migration agent")
            )
        elif rules.allow_migration_agent:
            _LOG.warning(
                "policy accepts an SNP guest that allows a migration agent "
                "(snp.allow_migration_agent = true)"
            )
            checks.append(
                Check(
                    "policy_migration_agent",
                    True,
                    "the guest policy allows a migration agent; accepted by "
                    "snp.allow_migration_agent = true",
                )
            )
        else:
            checks.append(
                Check(
                    "policy_migration_agent",
                    False,
                    "the guest policy allows a migration agent (MIGRATE_MA), "
                    "which could move the guest's keys out",
                )
            )

        single = policy.get("single_socket_required") if policy is not None else None
        if not isinstance(single, bool):
            checks.append(Check("policy_single_socket", False, "the claims lack policy bits"))
        elif not rules.require_single_socket:
            checks.append(Check("policy_single_socket", True, "single socket not required"))
        else:
            checks.append(
                Check(
                    "policy_single_socket",
                    single,
                    "the guest policy requires a single socket"
                    if single
                    else "the guest policy does not require a single socket (SINGLE_SOCKET)",
                )
            )

        vmpl = fields.get("vmpl")
        if not isinstance(vmpl, int) or isinstance(vmpl, bool):
            checks.append(Check("policy_vmpl", False, "the claims lack vmpl"))
        else:
            checks.append(
                Check(
                    "policy_vmpl",
                    vmpl <= rules.max_vmpl,
                    f"VMPL {vmpl} {'<=' if vmpl <= rules.max_vmpl else '>'} "
                    f"max_vmpl {rules.max_vmpl}",
                )
            )

        checks.append(
            _hex_field_one_of(
                fields, "policy_id_key", "id_key_digest", "ID_KEY_DIGEST", rules.id_key_digests
            )
        )
        author = _hex_field_one_of(
            fields,
            "policy_author_key",
            "author_key_digest",
            "AUTHOR_KEY_DIGEST",
            rules.author_key_digests,
        )
        if rules.author_key_digests and fields.get("author_key_en") is not True:
            # Without AUTHOR_KEY_EN the digest field is zero, not a signer.
            author = Check(
                "policy_author_key", False, "no author key signed the ID block (AUTHOR_KEY_EN 0)"
            )
        checks.append(author)

        # Revocation: the verifier checked the ASK and VCEK against the ARK's CRL.
        checks.append(
            _unchecked_collateral(
                "policy_revocation",
                fields.get("revocation_checked") is True,
                rules.allow_unchecked_revocation,
                "snp.allow_unchecked_revocation",
                checked="checked against AMD's CRL",
                missing="revocation not checked",
                remedy="give AMD's CRL for the product",
            )
        )
        return checks

    def _tdx(self, claims: Claims) -> list[Check]:
        rules = self.tdx
        fields = _Fields(claims)
        checks = [_one_of("policy_measurement", "MRTD", claims.measurement, rules.mrtd)]

        # RTMRs: each configured register must hold exactly the value given.
        if not rules.rtmr:
            checks.append(Check("policy_rtmr", True, "any RTMR values (no tdx.rtmr)"))
        else:
            wrong: list[str] = []
            for index, expected in sorted(rules.rtmr.items()):
                actual = fields.hex_bytes(f"rtmr{index}")
                if actual != expected:
                    wrong.append(
                        f"RTMR{index} is {actual.hex()[:16] + '...' if actual else 'missing'}"
                    )
            indices = ", ".join(sorted(rules.rtmr))
            checks.append(
                Check("policy_rtmr", False, "; ".join(wrong) + " (not the value in tdx.rtmr)")
                if wrong
                else Check("policy_rtmr", True, f"RTMR {indices} hold the values in tdx.rtmr")
            )

        if rules.min_tee_tcb_svn is None:
            checks.append(Check("policy_min_tcb", True, "any TEE_TCB_SVN (no tdx.min_tee_tcb_svn)"))
        else:
            svn = fields.hex_bytes("tee_tcb_svn")
            minimum: bytes = rules.min_tee_tcb_svn
            if svn is None or len(svn) != len(minimum):
                checks.append(Check("policy_min_tcb", False, "the claims lack tee_tcb_svn"))
            else:
                low = [
                    i
                    for i, (have, need) in enumerate(zip(svn, minimum, strict=True))
                    if have < need
                ]
                checks.append(
                    Check(
                        "policy_min_tcb",
                        not low,
                        f"TEE_TCB_SVN {svn.hex()} >= {minimum.hex()} in every component"
                        if not low
                        else f"TEE_TCB_SVN {svn.hex()} is below {minimum.hex()} "
                        f"at byte {', '.join(map(str, low))}",
                    )
                )
        checks.append(
            _debug_check(claims.debug, rules.allow_debug, "tdx", "TD_ATTRIBUTES.DEBUG is set")
        )
        checks.append(_tcb_status_check(claims, rules.allowed_tcb_statuses, "tdx"))
        checks.append(_advisories_check(claims, rules.allowed_advisories, "tdx"))
        checks.append(_qe_identity_check(fields, rules.allow_unchecked_qe_identity, "tdx"))
        return checks

    def _sgx(self, claims: Claims) -> list[Check]:
        rules = self.sgx
        fields = _Fields(claims)
        checks = [_one_of("policy_measurement", "MRENCLAVE", claims.measurement, rules.mrenclave)]
        checks.append(
            _hex_field_one_of(fields, "policy_signer", "mrsigner", "MRSIGNER", rules.mrsigner)
        )

        product = fields.get("isvprodid", "isv_prod_id")
        if rules.isv_prod_id is None:
            checks.append(Check("policy_product", True, "any ISVPRODID (no sgx.isv_prod_id)"))
        elif not isinstance(product, int) or isinstance(product, bool):
            checks.append(Check("policy_product", False, "the claims lack isv_prod_id"))
        else:
            checks.append(
                Check(
                    "policy_product",
                    product == rules.isv_prod_id,
                    f"ISVPRODID {product} {'is' if product == rules.isv_prod_id else 'is not'} "
                    f"{rules.isv_prod_id}",
                )
            )

        svn = fields.get("isvsvn", "isv_svn")
        if not isinstance(svn, int) or isinstance(svn, bool):
            checks.append(Check("policy_min_tcb", False, "the claims lack isv_svn"))
        else:
            ok = svn >= rules.min_isv_svn
            checks.append(
                Check(
                    "policy_min_tcb",
                    ok,
                    f"ISVSVN {svn} {'>=' if ok else '<'} min_isv_svn {rules.min_isv_svn}",
                )
            )
        checks.append(
            _debug_check(claims.debug, rules.allow_debug, "sgx", "ATTRIBUTES.DEBUG is set")
        )
        checks.append(_tcb_status_check(claims, rules.allowed_tcb_statuses, "sgx"))
        checks.append(_advisories_check(claims, rules.allowed_advisories, "sgx"))
        checks.append(_qe_identity_check(fields, rules.allow_unchecked_qe_identity, "sgx"))
        return checks

    def _workload(self, digest: str | None) -> Check:
        allowed = self.workload.digests
        if not allowed:
            shown = digest or "not bound"
            return Check(
                "policy_workload_digest", True, f"any workload ({shown}; no workload.digests)"
            )
        if digest is None:
            return Check(
                "policy_workload_digest",
                False,
                "the workload digest is not known: the verifier bound none into report_data",
            )
        if digest in allowed:
            return Check(
                "policy_workload_digest", True, f"workload {digest} is in workload.digests"
            )
        return Check(
            "policy_workload_digest", False, f"workload {_short(digest)} is not in workload.digests"
        )


# -- the rules' checks ------------------------------------------------------------------


class _Fields:
    """Reads the claims' vendor fields defensively: the verifier's names, its types."""

    def __init__(self, claims: Claims) -> None:
        self._fields = claims.fields

    def get(self, *names: str) -> object:
        """The first of `names` the claims have (verifiers spell some fields
        as the spec does, ISVPRODID as isvprodid, others with underscores)."""
        for name in names:
            if name in self._fields:
                return self._fields[name]
        return None

    def table(self, name: str) -> Mapping[str, object] | None:
        value = self._fields.get(name)
        return value if isinstance(value, Mapping) else None

    def hex_bytes(self, name: str) -> bytes | None:
        value = self._fields.get(name)
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                return None
        return None


def _unchecked_collateral(
    name: str,
    was_checked: bool,
    allowed: bool,
    setting: str,
    *,
    checked: str,
    missing: str,
    remedy: str,
) -> Check:
    """A rule for collateral a verifier can go without (AMD's CRL, Intel's QE
    Identity): passes when it was checked, or when the operator's `setting`
    accepts its absence, which is logged each time."""
    if was_checked:
        return Check(name, True, checked)
    if allowed:
        _LOG.warning("policy accepts evidence with %s (%s = true)", missing, setting)
        return Check(name, True, f"{missing}; accepted by {setting} = true")
    return Check(name, False, f"{missing}: {remedy}, or set {setting} = true")


def _qe_identity_check(fields: _Fields, allowed: bool, tee: str) -> Check:
    return _unchecked_collateral(
        "policy_qe_identity",
        fields.get("qe_identity_checked") is True,
        allowed,
        f"{tee}.allow_unchecked_qe_identity",
        checked="the QE was checked against Intel's QE Identity",
        missing="the QE's TCB was not checked (no QE Identity)",
        remedy="give Intel's QE Identity collateral",
    )


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:32] + "..."


def _one_of(name: str, label: str, value: bytes, allowed: Sequence[bytes]) -> Check:
    if not allowed:
        return Check(name, True, f"any {label} ({value.hex()[:16]}...; none listed)")
    if value in allowed:
        return Check(name, True, f"{label} {value.hex()[:16]}... is listed")
    return Check(
        name, False, f"{label} {value.hex()[:16]}... is not one of the {len(allowed)} listed"
    )


def _hex_field_one_of(
    fields: _Fields, name: str, key: str, label: str, allowed: Sequence[bytes]
) -> Check:
    if not allowed:
        return Check(name, True, f"any {label} (none listed)")
    value = fields.hex_bytes(key)
    if value is None:
        return Check(name, False, f"the claims lack {key}")
    return _one_of(name, label, value, allowed)


def _min_tcb_check(tcb: Mapping[str, object], minimum: SnpTcb) -> Check:
    wanted: list[tuple[str, int]] = [
        ("bootloader", minimum.bootloader),
        ("tee", minimum.tee),
        ("snp", minimum.snp),
        ("microcode", minimum.microcode),
    ]
    if minimum.fmc is not None:
        wanted.insert(0, ("fmc", minimum.fmc))
    shown: list[str] = []
    low: list[str] = []
    for component, floor in wanted:
        value = tcb.get(component)
        if not isinstance(value, int) or isinstance(value, bool):
            low.append(f"{component} missing (the report has no {component} SVN)")
            continue
        shown.append(f"{component} {value}")
        if value < floor:
            low.append(f"{component} {value} < {floor}")
    if low:
        return Check("policy_min_tcb", False, "reported TCB below snp.min_tcb: " + ", ".join(low))
    return Check("policy_min_tcb", True, "reported TCB " + ", ".join(shown) + " meets snp.min_tcb")


def _debug_check(debug: bool, allowed: bool, tee: str, what: str) -> Check:
    if not debug:
        return Check("policy_debug", True, "not debuggable")
    if allowed:
        _LOG.warning(
            "policy accepts a debuggable %s keep (%s.allow_debug = true): "
            "its host can read and change its memory",
            tee,
            tee,
        )
        return Check("policy_debug", True, f"{what}; accepted by {tee}.allow_debug = true")
    return Check("policy_debug", False, f"{what}: the host can read and change the keep's memory")


def _tcb_status_check(claims: Claims, allowed: Sequence[str], tee: str) -> Check:
    status = claims.tcb_status
    if status is None:
        return Check(
            "policy_tcb_status",
            False,
            "no TCB status: the quote was not matched against TCB Info collateral",
        )
    if status not in allowed:
        return Check(
            "policy_tcb_status",
            False,
            f"TCB status {_short(status)} is not in {tee}.allowed_tcb_statuses "
            f"({', '.join(allowed)})",
        )
    if status != _UP_TO_DATE:
        _LOG.warning(
            "policy accepts a %s keep whose TCB status is %s (%s.allowed_tcb_statuses)",
            tee,
            status,
            tee,
        )
        return Check(
            "policy_tcb_status",
            True,
            f"TCB status {status}; accepted by {tee}.allowed_tcb_statuses",
        )
    return Check("policy_tcb_status", True, "TCB status UpToDate")


def _advisories_check(claims: Claims, allowed: Sequence[str], tee: str) -> Check:
    if not claims.advisories:
        return Check("policy_advisories", True, "no advisories apply")
    unlisted = [advisory for advisory in claims.advisories if advisory not in allowed]
    if unlisted:
        shown = ", ".join(_short(advisory) for advisory in unlisted[:5])
        more = f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
        return Check(
            "policy_advisories",
            False,
            f"advisories not in {tee}.allowed_advisories: {shown}{more}",
        )
    _LOG.warning(
        "policy accepts a %s keep affected by %s (%s.allowed_advisories)",
        tee,
        ", ".join(claims.advisories),
        tee,
    )
    return Check(
        "policy_advisories",
        True,
        f"{len(claims.advisories)} advisories apply, all in {tee}.allowed_advisories",
    )


# -- loading ------------------------------------------------------------------------------


def default_policy() -> Policy:
    """The policy without a file: hardware TEEs with strict defaults, software refused."""
    return Policy()


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and check the text of a policy; PolicyError names `source`, the key and why."""
    if not isinstance(text, str):
        raise PolicyError(f"{source}: a policy is text")
    data = parse_toml(text, limit=_LIMITS.max_policy_size, error=PolicyError, source=source)
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        raise _policy_error(source, error) from None


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read, parse and check a policy file (UTF-8 TOML)."""
    source = shown(os.fspath(path))
    text = read_toml_text(path, limit=_LIMITS.max_policy_size, error=PolicyError, source=source)
    return parse_policy(text, source=source)


# -- errors ---------------------------------------------------------------------------------

_EXPECTED_BY_TYPE = {
    "bool_type": "true or false",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "string_type": "a string",
    "tuple_type": "an array",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "mapping_type": "a table",
}


def _policy_error(source: str, error: ValidationError) -> PolicyError:
    problems = [_problem_text(details) for details in error.errors(include_url=False)]
    return problems_error(source, problems, PolicyError)


def _problem_text(details: ErrorDetails) -> str:
    context = details.get("ctx") or {}
    loc = (*details["loc"], *context.get("at", ()))
    path = format_loc(loc)
    prefix = f"{path}: " if path else ""
    kind = details["type"]
    given = details["input"]
    if kind == "problem":
        return prefix + str(context["detail"])
    if kind == "missing":
        return prefix + "required"
    if kind == "extra_forbidden":
        allowed = _keys_at(loc[:-1])
        return prefix + "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "literal_error":
        return f"{prefix}expected {context.get('expected', 'a known value')}, got {describe(given)}"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds_at(loc)
        return f"{prefix}expected an integer from {low} to {high}, got {describe(given)}"
    if kind == "too_long":
        return f"{prefix}at most {context.get('max_length')} entries allowed"
    if kind in _EXPECTED_BY_TYPE:
        return f"{prefix}expected {_EXPECTED_BY_TYPE[kind]}, got {describe(given)}"
    return prefix + details["msg"]


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    model: type[BaseModel] = Policy
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _keys_at(loc: Sequence[str | int]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model is not None else []


_BOUNDS = {"max_vmpl": (0, 3), "isv_prod_id": (0, 0xFFFF), "min_isv_svn": (0, 0xFFFF)}


def _bounds_at(loc: Sequence[str | int]) -> tuple[int, int]:
    """The range of the bounded integer at `loc`: an SVN byte unless named in _BOUNDS."""
    name = loc[-1] if loc else None
    return _BOUNDS.get(name, (0, 255)) if isinstance(name, str) else (0, 255)
