"""The public names of each module, pinned: changing them is a deliberate act."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PUBLIC = {
    "wasmkeep": ["__version__"],
    "wasmkeep.errors": [
        "EXIT_HOST_VIOLATION",
        "EXIT_TIMEOUT",
        "EXIT_TRAP",
        "EXIT_USAGE",
        "BackendUnavailable",
        "ConfigError",
        "HostProtocolViolation",
        "Interrupted",
        "KeepError",
        "WasmkeepError",
        "WorkloadError",
        "WorkloadTimedOut",
        "WorkloadTrapped",
    ],
    "wasmkeep.workload": ["Workload"],
    "wasmkeep.printable": ["escaped", "quote", "shown"],
    "wasmkeep.tomlfile": [
        "MAX_PROBLEMS",
        "describe",
        "format_loc",
        "parse_toml",
        "problems_error",
        "read_toml_text",
    ],
    "wasmkeep.limits": ["DEFAULT_LIMITS", "RUNTIME_ALLOWANCE", "Limits"],
    "wasmkeep.sallyport.calls": ["FDFLAGS", "HostCalls", "OFLAGS", "POLL_READ", "POLL_WRITE"],
    "wasmkeep.keep.session": ["KeepPlatform", "run_keep"],
    "wasmkeep.keep.process": ["PROCESS_KEEP", "main"],
    "wasmkeep.keep.runtime": ["PreparedRun", "RunOptions", "check_interface", "run_workload"],
    "wasmkeep.host.executor": ["Executor", "KeepHungUp", "errno_of"],
    "wasmkeep.host.setup": ["prepare_host"],
    "wasmkeep.host.platform": [
        "BACKENDS",
        "BackendReport",
        "Check",
        "ProbeResult",
        "Probes",
        "most_isolating_available",
        "platform_document",
        "probe_platform",
    ],
    "wasmkeep.config": [
        "EXAMPLE_CONFIG",
        "CaBundle",
        "Config",
        "ConnectFile",
        "DirSpec",
        "FileSpec",
        "ListenFile",
        "NullFile",
        "Protocol",
        "StderrFile",
        "StdinFile",
        "StdoutFile",
        "TlsVersion",
        "default_config",
        "load_config",
        "parse_config",
    ],
    "wasmkeep.keep.enrol": [
        "DEFAULT_ENROLMENT_LIMITS",
        "EnrolmentError",
        "EnrolmentLimits",
        "HttpResponse",
        "build_csr",
        "enrol",
        "http_request",
        "keep_evidence",
        "keep_tls",
        "parse_chain",
        "read_response",
        "refusal_reason",
        "verify_chain",
    ],
    "wasmkeep.steward.errors": ["CaError", "StewardError"],
    "wasmkeep.steward.limits": ["DEFAULT_STEWARD_LIMITS", "StewardLimits"],
    "wasmkeep.steward.ca": [
        "CA_CERT_FILE",
        "CA_KEY_FILE",
        "CURVES",
        "LEAF_KEY_USAGE",
        "PASSPHRASE_ENV",
        "CertificateAuthority",
        "generate_ca",
        "load_ca",
        "open_ca_directory",
        "read_passphrase",
        "save_ca",
        "server_credentials",
        "write_private_file",
        "write_public_file",
    ],
    "wasmkeep.steward.issuer": [
        "DEFAULT_LIFETIME",
        "IssuedCertificate",
        "certificate_claims",
        "check_key",
        "check_names",
        "issue",
        "name_text",
    ],
    "wasmkeep.steward.service": ["Clock", "Decision", "Steward", "utc_now"],
    "wasmkeep.steward.inspect": [
        "CLAIM_FIELDS",
        "MAX_CERTIFICATE_FILE",
        "Inspection",
        "inspect_certificate",
        "read_certificates",
        "read_claims",
    ],
    "wasmkeep.steward.app": [
        "PKCS10",
        "PKIPATH",
        "CertificateRequest",
        "CheckResult",
        "ErrorResponse",
        "IssuedResponse",
        "RefusedResponse",
        "build_app",
        "create_app",
    ],
    "wasmkeep.steward.server": [
        "bind",
        "make_server",
        "serve_in_thread",
        "server_names",
        "tls_context",
        "url_for",
    ],
    "wasmkeep.attestation.keep_csr": [
        "CLAIMS_OID",
        "ENARX_SGX_OID",
        "ENARX_SNP_OID",
        "EVIDENCE_OID",
        "MAX_EVIDENCE_EXTENSION",
        "WASMKEEP_OID_ARC",
        "WORKLOAD_DIGEST_OID",
        "EvidenceForm",
        "KeepEvidence",
        "decode_evidence",
        "decode_workload_digest",
        "encode_evidence",
        "encode_workload_digest",
    ],
    "wasmkeep.attestation.errors": [
        "AttestationError",
        "EvidenceFormatError",
        "PolicyError",
    ],
    "wasmkeep.attestation.verdict": [
        "Check",
        "Claims",
        "Tee",
        "Verdict",
    ],
    "wasmkeep.attestation.snp": [
        "CHECK_NAMES",
        "AmdRoots",
        "ProductRoots",
        "SnpEvidence",
        "SnpProduct",
        "SnpReport",
        "SnpVerifier",
        "TcbVersion",
        "load_amd_certificate",
        "load_amd_crl",
        "parse_enarx_snp_extension",
        "parse_snp_report",
        "parse_tsm_capture",
        "parse_tsm_json",
        "verify_snp",
    ],
    "wasmkeep.attestation.dcap": [
        "ENARX_SGX_OID",
        "ENCLAVE_TCB_STATUSES",
        "PINNED_INTEL_ROOT",
        "PINNED_INTEL_ROOT_SHA256",
        "TCB_STATUSES",
        "Collateral",
        "DcapVerifier",
        "EcdsaSignatureData",
        "EnclaveTcbLevel",
        "PckExtensions",
        "QeIdentity",
        "Quote",
        "QuoteHeader",
        "SgxAttributes",
        "SgxReportBody",
        "TcbInfo",
        "TcbLevel",
        "TdAttributes",
        "TdReportBody",
        "TdxModule",
        "TdxModuleIdentity",
        "enarx_sgx_report_data",
        "parse_crl",
        "parse_enarx_sgx_extension",
        "parse_issuer_chain",
        "parse_pck_extensions",
        "parse_qe_identity",
        "parse_quote",
        "parse_qvl_collateral",
        "parse_tcb_info",
        "verify_quote",
    ],
    "wasmkeep.attestation.software": [
        "REPORT_DATA_SIZE",
        "SOFTWARE_BACKENDS",
        "SOFTWARE_MAGIC",
        "SoftwareEvidence",
        "parse_software_evidence",
        "report_data",
        "verify_software",
    ],
    "wasmkeep.attestation.policy": [
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
    ],
    "wasmkeep.attestation.limits": [
        "DEFAULT_ATTESTATION_LIMITS",
        "AttestationLimits",
    ],
    "wasmkeep.keep.evidence": [
        "BACKENDS",
        "SNP_GET_EXT_REPORT",
        "SNP_GET_REPORT",
        "TDX_CMD_GET_REPORT0",
        "TSM_REPORT_DIR",
        "CollectedEvidence",
        "CollectionError",
        "ConfigfsOps",
        "EvidenceKind",
        "Ioctl",
        "OsConfigfs",
        "SnpExtReportReq",
        "SnpGuestRequestIoctl",
        "SnpReportReq",
        "SnpReportResp",
        "TdxReportReq",
        "collect_evidence",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names(module: str) -> None:
    loaded = importlib.import_module(module)
    assert sorted(loaded.__all__) == sorted(PUBLIC[module])
    for name in loaded.__all__:
        assert hasattr(loaded, name), name


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    ("side", "forbidden"),
    [
        ("keep", ("wasmkeep.host",)),
        ("host", ("wasmkeep.keep",)),
        ("sallyport", ("wasmkeep.host", "wasmkeep.keep")),
        # Verification is pure: no runtime, no host, no network or processes.
        (
            "attestation",
            ("wasmkeep.host", "wasmkeep.keep", "wasmkeep.cli", "socket", "subprocess"),
        ),
    ],
)
def test_the_trust_boundary_in_imports(side: str, forbidden: tuple[str, ...]) -> None:
    """keep/ never imports host/, host/ never imports keep/, both speak sallyport/;
    attestation/ stands alone."""
    source = Path(importlib.import_module("wasmkeep").__file__ or "").parent
    for path in (source / side).rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(forbidden), f"{path} imports {name}"
