"""The Steward's HTTP API: Enarx-compatible issuance, a JSON API, an OpenAPI description.

Endpoints (every error body names what is wrong; nothing answers 5xx for
any input a client can send):

``GET /``
    Health: 200, ``text/plain``.
``POST /`` with ``Content-Type: application/pkcs10`` (a DER CSR; PEM is read too)
    Enarx's Steward protocol (enarx/steward, crates/server: ``attest``), which
    Enarx keeps speak: 200 with the chain as a DER ``SEQUENCE OF Certificate``
    in PkiPath order, the CA's certificate first and the keep's last, as Enarx
    answers and Enarx keeps read it (``PkiPath::from_der``); ``Content-Type:
    application/pkix-pkipath``. A refusal is 403 with a ``text/plain`` body
    naming each failed check; a malformed CSR 400; a body over the limit 413;
    another content type 415. (Enarx's Steward answers 400 for a content type
    it does not read, 401 when no evidence is found and 400 when evidence does
    not verify; Enarx keeps only check for 200, so the more precise codes here
    change nothing for them. Its ``application/vnd.steward.pkcs10-bundle.v1``
    batch form, which no keep sends, is not offered: 415.)
``POST /api/v1/certificates`` with JSON ``{"csr": "<base64 DER, or PEM>"}``
    200 with ``{certificate_chain (PEM, the keep's certificate first),
    certificate, ca_certificate, serial_number, not_before, not_after, names,
    claims, checks}``; 403 with ``{error: "refused", reason, failed_checks,
    checks}``, every check with its detail; 400, 413, 415 with ``{error, detail}``.
``GET /openapi.json``, ``GET /docs``
    The OpenAPI description, and a page that renders it.

Bodies are read in chunks and refused (413) as soon as they pass the limit,
or before reading when their Content-Length says they would. The appraisal is
CPU-bound; :func:`create_app`'s `offload` runs it in a worker thread instead
of on the event loop (see benchmarks/README.md, "Steward", for which is faster).
"""

from __future__ import annotations

import binascii
import datetime
from typing import Literal

from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from wasmkeep import __version__
from wasmkeep.attestation.appraise import MAX_CSR_SIZE, SnpCertificates
from wasmkeep.attestation.dcap import Collateral, DcapVerifier
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.policy import Policy
from wasmkeep.attestation.snp import SnpVerifier
from wasmkeep.attestation.verdict import Verdict
from wasmkeep.steward.ca import CertificateAuthority
from wasmkeep.steward.issuer import DEFAULT_LIFETIME, name_text
from wasmkeep.steward.limits import DEFAULT_STEWARD_LIMITS, StewardLimits
from wasmkeep.steward.service import Clock, Decision, Steward, utc_now

__all__ = [
    "PKCS10",
    "PKIPATH",
    "CertificateRequest",
    "CheckResult",
    "ErrorResponse",
    "IssuedResponse",
    "RefusedResponse",
    "build_app",
    "create_app",
]

PKCS10 = "application/pkcs10"
PKIPATH = "application/pkix-pkipath"
_JSON = "application/json"
_TEXT = "text/plain"
#: The longest `csr` in the JSON API: the largest CSR in base64 (or as PEM,
#: which adds line breaks and its armour: about as long).
_MAX_CSR_TEXT = MAX_CSR_SIZE * 4 // 3 + 1024


# -- the JSON API's documents ---------------------------------------------------------------


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CertificateRequest(_Document):
    """A CSR for the JSON API."""

    csr: str = Field(
        max_length=_MAX_CSR_TEXT,
        description="The keep's PKCS #10 CSR: DER in base64, or PEM.",
    )


class CheckResult(_Document):
    """One check the Steward made, passed or failed, with its reason."""

    name: str
    passed: bool
    detail: str


class CertificateClaims(_Document):
    """The claims the certificate carries (its extension, CLAIMS_OID)."""

    tee: str = Field(description='"snp", "tdx", "sgx", or "software" (no hardware TEE)')
    backend: str = Field(description="the keep's backend (nil, process, vm, snp, tdx, sgx)")
    measurement: str = Field(description="the launch measurement, hex (empty for software)")
    workload_digest: str | None = Field(description="sha256:<hex> the evidence binds, if any")
    tcb_status: str | None
    debug: bool
    evidence: str = Field(description="the form of the evidence in the CSR")
    issued_at: str


class IssuedResponse(_Document):
    """A certificate issued: the chain in PEM, and what was verified."""

    certificate_chain: str = Field(description="PEM: the keep's certificate, then the CA's")
    certificate: str
    ca_certificate: str
    serial_number: str = Field(description="hex")
    not_before: str
    not_after: str
    names: list[str]
    claims: CertificateClaims
    checks: list[CheckResult]


class RefusedResponse(_Document):
    """A CSR refused: which checks failed, and every check made."""

    error: Literal["refused"]
    reason: str
    failed_checks: list[str]
    checks: list[CheckResult]


class ErrorResponse(_Document):
    """A request the Steward could not read."""

    error: str
    detail: str


# -- helpers ---------------------------------------------------------------------------------


class _Problem(Exception):
    """A request refused before any decision: its status and why."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read only while it stays within `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 12:
            raise _Problem(400, "bad request", "Content-Length is not a number")
        if int(declared) > limit:
            raise _Problem(
                413, "too large", f"the body is {declared} bytes, over the limit of {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Problem(413, "too large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _client(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else "-"


def _checks(verdict: Verdict) -> list[CheckResult]:
    return [
        CheckResult(name=check.name, passed=check.passed, detail=check.detail)
        for check in verdict.checks
    ]


def _refusal_text(decision: Decision) -> str:
    failed = decision.failures
    lines = [f"refused: {', '.join(check.name for check in failed)}"]
    lines += [f"{check.name}: {check.detail}" for check in failed]
    return "\n".join(lines) + "\n"


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _issued_document(decision: Decision) -> IssuedResponse:
    issued = decision.issued
    assert issued is not None
    certificate = issued.certificate
    pem = issued.chain_pem()
    leaf_end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [name_text(name) for name in san.value]
    except x509.ExtensionNotFound:
        names = []
    return IssuedResponse(
        certificate_chain=pem,
        certificate=pem[:leaf_end],
        ca_certificate=pem[leaf_end:],
        serial_number=f"{certificate.serial_number:x}",
        not_before=_iso(certificate.not_valid_before_utc),
        not_after=_iso(certificate.not_valid_after_utc),
        names=names,
        claims=CertificateClaims.model_validate(dict(issued.claims)),
        checks=_checks(decision.verdict),
    )


def _text(status: int, text: str) -> PlainTextResponse:
    return PlainTextResponse(text if text.endswith("\n") else text + "\n", status_code=status)


def _json(status: int, document: BaseModel) -> JSONResponse:
    return JSONResponse(document.model_dump(mode="json"), status_code=status)


def _decode_csr(text: str) -> bytes:
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        if not stripped.isascii():
            raise _Problem(400, "malformed", "the PEM CSR is not ASCII")
        return stripped.encode("ascii")
    try:
        return binascii.a2b_base64(stripped.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _Problem(400, "malformed", "csr is neither PEM nor base64 (DER)") from None


# -- the app ---------------------------------------------------------------------------------

_TEXT_BODY = {"content": {_TEXT: {"schema": {"type": "string"}}}}


def build_app(steward: Steward, *, offload: bool = False) -> FastAPI:
    """The ASGI app serving `steward` (see the module docstring)."""
    limits = steward.limits
    app = FastAPI(
        title="wasmkeep Steward",
        version=__version__,
        description=(
            "The certificate authority for attested keeps: a keep sends a CSR carrying its "
            "attestation evidence; the Steward verifies it against its policy and issues a "
            "short-lived certificate whose extension carries the verified claims."
        ),
        redoc_url=None,
    )
    app.state.steward = steward

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette names only the methods of the first route matching the
            # path; "/" has two (GET health, POST issue).
            methods = sorted(
                {
                    method
                    for route in app.routes
                    if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
                    for method in route.methods or ()
                }
            )
            headers["Allow"] = ", ".join(methods)
        return JSONResponse({"detail": error.detail}, error.status_code, headers=headers)

    async def decide(body: bytes, client: str) -> Decision:
        if offload:
            return await run_in_threadpool(steward.decide, body, client=client)
        return steward.decide(body, client=client)

    @app.get(
        "/",
        summary="Health",
        response_class=PlainTextResponse,
        responses={200: {"description": "The Steward is serving.", **_TEXT_BODY}},
    )
    async def health() -> PlainTextResponse:
        return _text(200, "wasmkeep steward: ok")

    @app.post(
        "/",
        summary="Issue a certificate for a CSR (Enarx-compatible)",
        response_class=Response,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "A PKCS #10 CSR in DER carrying the keep's evidence.",
                "content": {PKCS10: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        responses={
            200: {
                "description": "The chain: DER SEQUENCE OF Certificate, the CA's certificate "
                "first (PkiPath), as Enarx's Steward answers.",
                "content": {PKIPATH: {"schema": {"type": "string", "format": "binary"}}},
            },
            400: {"description": "The CSR is malformed.", **_TEXT_BODY},
            403: {"description": "Refused: each failed check with its reason.", **_TEXT_BODY},
            413: {"description": "The body is larger than the limit.", **_TEXT_BODY},
            415: {"description": "The body is not application/pkcs10.", **_TEXT_BODY},
        },
    )
    async def attest(request: Request) -> Response:
        try:
            if _media_type(request) != PKCS10:
                raise _Problem(415, "unsupported media type", f"send a CSR as {PKCS10}")
            body = await _read_body(request, limits.max_body)
            decision = await decide(body, _client(request))
        except _Problem as problem:
            return _text(problem.status, f"{problem.error}: {problem.detail}")
        except EvidenceFormatError as error:
            return _text(400, f"malformed CSR: {error}")
        if decision.issued is None:
            return _text(403, _refusal_text(decision))
        return Response(decision.issued.pkipath_der(), media_type=PKIPATH)

    @app.post(
        "/api/v1/certificates",
        summary="Issue a certificate for a CSR, saying why when it is refused",
        response_class=JSONResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": CertificateRequest.model_json_schema()}},
            }
        },
        responses={
            200: {"model": IssuedResponse, "description": "Issued."},
            400: {"model": ErrorResponse, "description": "The request or the CSR is malformed."},
            403: {"model": RefusedResponse, "description": "Refused: the failed checks."},
            413: {"model": ErrorResponse, "description": "The body is larger than the limit."},
            415: {"model": ErrorResponse, "description": "The body is not JSON."},
        },
    )
    async def certificates(request: Request) -> JSONResponse:
        try:
            if _media_type(request) != _JSON:
                raise _Problem(415, "unsupported media type", f"send {_JSON}")
            body = await _read_body(request, limits.max_body)
            try:
                document = CertificateRequest.model_validate_json(body)
            except ValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}"
                    for item in error.errors(include_url=False)[:5]
                )
                raise _Problem(400, "malformed", problems) from None
            decision = await decide(_decode_csr(document.csr), _client(request))
        except _Problem as problem:
            return _json(problem.status, ErrorResponse(error=problem.error, detail=problem.detail))
        except EvidenceFormatError as error:
            return _json(400, ErrorResponse(error="malformed", detail=f"malformed CSR: {error}"))
        if decision.issued is None:
            return _json(
                403,
                RefusedResponse(
                    error="refused",
                    reason=decision.reason(),
                    failed_checks=[check.name for check in decision.failures],
                    checks=_checks(decision.verdict),
                ),
            )
        return _json(200, _issued_document(decision))

    return app


def create_app(
    ca: CertificateAuthority,
    *,
    policy: Policy,
    lifetime: datetime.timedelta = DEFAULT_LIFETIME,
    clock: Clock = utc_now,
    collateral: Collateral | None = None,
    snp_certificates: SnpCertificates | None = None,
    snp_verifier: SnpVerifier | None = None,
    dcap_verifier: DcapVerifier | None = None,
    limits: StewardLimits = DEFAULT_STEWARD_LIMITS,
    offload: bool = False,
) -> FastAPI:
    """The Steward's ASGI app: a :class:`Steward` made of these, served by :func:`build_app`.

    The verifiers (made here when not given) and their caches are shared by
    every request; `clock` is read once per CSR.
    """
    steward = Steward(
        ca,
        policy=policy,
        lifetime=lifetime,
        clock=clock,
        collateral=collateral,
        snp_certificates=snp_certificates,
        snp_verifier=snp_verifier,
        dcap_verifier=dcap_verifier,
        limits=limits,
    )
    return build_app(steward, offload=offload)
