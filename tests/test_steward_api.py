"""The Steward's HTTP API: a real uvicorn server over TLS on loopback, curl and
openssl as clients, the real Enarx CSRs, the JSON API, bad input (schemathesis
against the OpenAPI description, hypothesis-made CSRs) and load."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import http.client
import json
import socket
import ssl
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.keep_csrs import (
    DIGEST,
    ICELAKE_CSR,
    ICELAKE_NOW,
    ICELAKE_POLICY,
    INSECURE_POLICY,
    MILAN_CSR,
    MILAN_MEASUREMENT,
    MILAN_NOW,
    csr_with,
    software_csr,
    spki_of,
)
from wasmkeep.attestation import der
from wasmkeep.attestation.keep_csr import CLAIMS_OID, EVIDENCE_OID, WORKLOAD_DIGEST_OID
from wasmkeep.attestation.policy import parse_policy
from wasmkeep.steward.app import PKCS10, PKIPATH, create_app
from wasmkeep.steward.ca import CertificateAuthority, generate_ca
from wasmkeep.steward.limits import DEFAULT_STEWARD_LIMITS
from wasmkeep.steward.server import serve_in_thread, server_names, tls_context

#: The CA is made in 2022, valid ten years: it can issue at the Enarx vectors'
#: times (2023) and now.
CA_BORN = datetime.datetime(2022, 6, 1, tzinfo=datetime.UTC)
MILAN_POLICY = f'[snp]\nmeasurements = ["{MILAN_MEASUREMENT}"]\n'
OTHER_MEASUREMENT_POLICY = f'[snp]\nmeasurements = ["{"00" * 48}"]\n'


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return generate_ca(now=CA_BORN)


@pytest.fixture(scope="module")
def ca_file(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("steward") / "ca.crt"
    path.write_bytes(ca.certificate_pem)
    return path


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


ServeFactory = Callable[..., str]


@pytest.fixture
def serve(ca: CertificateAuthority) -> Iterator[ServeFactory]:
    """Start Stewards over TLS on loopback for this test; each call gives a URL."""
    stack: list[Any] = []

    def start(
        policy: str, *, clock: Callable[[], datetime.datetime] = now_utc, **kwargs: Any
    ) -> str:
        app = create_app(ca, policy=parse_policy(policy), clock=clock, **kwargs)
        context = tls_context(ca, server_names("127.0.0.1"), now=now_utc())
        manager = serve_in_thread(app, ssl_context=context)
        url = manager.__enter__()
        stack.append(manager)
        return url

    yield start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def post(
    url: str, body: bytes, content_type: str, ca_file: Path, path: str = "/"
) -> tuple[int, str, bytes]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=client_context(ca_file), timeout=30
    )
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def read_response(tls: ssl.SSLSocket) -> str:
    """One HTTP response, read to the end of its body (Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = tls.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def pkipath(body: bytes) -> list[x509.Certificate]:
    """The certificates of a DER SEQUENCE OF Certificate, in order."""
    top = der.parse_der(body, "chain").expect(der.SEQUENCE, "chain")
    return [x509.load_der_x509_certificate(child.encoded) for child in top.children()]


def claims_of(certificate: x509.Certificate) -> dict[str, Any]:
    extension = certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(CLAIMS_OID))
    assert not extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    document = json.loads(der.parse_der(extension.value.value).as_utf8("claims"))
    assert isinstance(document, dict)
    return document


# -- over TLS, with curl and openssl -----------------------------------------------------------


def test_curl_gets_a_certificate_openssl_verifies(
    serve: ServeFactory, ca_file: Path, tmp_path: Path
) -> None:
    url = serve(INSECURE_POLICY)
    health = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(ca_file), url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert health.stdout == "wasmkeep steward: ok\n"

    keep = software_csr(names=("keep.example", "127.0.0.1"))
    (tmp_path / "csr.der").write_bytes(keep.der)
    fetched = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(ca_file), "-X", "POST",
         "--data-binary", f"@{tmp_path / 'csr.der'}", "-H", f"Content-Type: {PKCS10}",
         "-o", str(tmp_path / "chain.der"), "-w", "%{http_code} %{content_type}", url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == f"200 {PKIPATH}"
    ca_certificate, leaf = pkipath((tmp_path / "chain.der").read_bytes())
    assert ca_certificate.public_bytes(serialization.Encoding.PEM) == ca_file.read_bytes()
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_file), "-purpose", "sslserver",
         str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip().endswith(": OK")
    client = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_file), "-purpose", "sslclient",
         str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert client.returncode == 0, client.stdout + client.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "DNS:keep.example, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text

    # The certificate: the CSR's key, short-lived, the claims of its evidence.
    assert spki_of(keep.key) == leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == datetime.timedelta(hours=12, minutes=1)  # 1 minute backdated
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    claims = claims_of(leaf)
    assert claims["workload_digest"] == DIGEST
    assert claims["tee"] == "software"
    assert claims["backend"] == "process"
    assert claims["evidence"] == "software"
    assert claims["debug"] is True
    assert claims["measurement"] == ""
    assert set(claims) == {
        "tee", "backend", "measurement", "workload_digest", "tcb_status", "debug", "evidence",
        "issued_at",
    }  # fmt: skip


def test_the_enarx_csrs_over_https(serve: ServeFactory, ca_file: Path) -> None:
    """Accepted under a policy naming their measurement, refused (naming
    policy_measurement) under one that does not: the clock set to their time."""
    milan = MILAN_CSR.read_bytes()
    accepting = serve(MILAN_POLICY, clock=lambda: MILAN_NOW)
    status, content_type, body = post(accepting, milan, PKCS10, ca_file)
    assert (status, content_type) == (200, PKIPATH), body
    ca_certificate, leaf = pkipath(body)
    csr = x509.load_der_x509_csr(milan)
    assert leaf.public_key() == csr.public_key()
    assert leaf.not_valid_before_utc < MILAN_NOW < leaf.not_valid_after_utc
    claims = claims_of(leaf)
    assert claims["measurement"] == MILAN_MEASUREMENT
    assert (claims["tee"], claims["evidence"], claims["workload_digest"]) == (
        "snp",
        "enarx-snp",
        None,
    )
    leaf.verify_directly_issued_by(ca_certificate)

    refusing = serve(OTHER_MEASUREMENT_POLICY, clock=lambda: MILAN_NOW)
    status, content_type, body = post(refusing, milan, PKCS10, ca_file)
    assert status == 403
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert text.startswith("refused: policy_measurement\n")
    assert "MEASUREMENT ff717ae719840c93... is not one of the 1 listed" in text

    icelake = serve(ICELAKE_POLICY, clock=lambda: ICELAKE_NOW)
    status, _, body = post(icelake, ICELAKE_CSR.read_bytes(), PKCS10, ca_file)
    assert status == 200, body
    assert claims_of(pkipath(body)[1])["tee"] == "sgx"


def test_the_json_api_explains_a_refusal(serve: ServeFactory, ca_file: Path) -> None:
    pinned = f'{INSECURE_POLICY}[workload]\ndigests = ["sha256:{"00" * 32}"]\n'
    url = serve(pinned)
    keep = software_csr()
    request = json.dumps({"csr": base64.b64encode(keep.der).decode()}).encode()
    status, content_type, body = post(
        url, request, "application/json", ca_file, "/api/v1/certificates"
    )
    assert (status, content_type) == (403, "application/json")
    document = json.loads(body)
    assert document["error"] == "refused"
    assert document["failed_checks"] == ["policy_workload_digest"]
    assert "is not in workload.digests" in document["reason"]
    by_name = {check["name"]: check for check in document["checks"]}
    assert by_name["binding"]["passed"]
    assert by_name["policy_insecure_allowed"]["passed"]
    assert not by_name["policy_workload_digest"]["passed"]

    url = serve(INSECURE_POLICY)
    pem = x509.load_der_x509_csr(keep.der).public_bytes(serialization.Encoding.PEM)
    request = json.dumps({"csr": pem.decode()}).encode()
    status, _, body = post(url, request, "application/json", ca_file, "/api/v1/certificates")
    assert status == 200, body
    document = json.loads(body)
    assert document["claims"]["workload_digest"] == DIGEST
    assert document["names"] == ["keep.example", "127.0.0.1"]
    assert document["certificate_chain"] == document["certificate"] + document["ca_certificate"]
    assert document["ca_certificate"].encode() == ca_file.read_bytes()
    leaf = x509.load_pem_x509_certificate(document["certificate"].encode())
    assert f"{leaf.serial_number:x}" == document["serial_number"]
    assert all(check["passed"] for check in document["checks"])


# -- bad input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def insecure_app(ca: CertificateAuthority) -> FastAPI:
    return create_app(ca, policy=parse_policy(INSECURE_POLICY))


@pytest.fixture(scope="module")
def client(insecure_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(insecure_app) as test_client:
        yield test_client


def test_refusals_and_bad_requests(client: TestClient) -> None:
    good = software_csr().der
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("/", good, {"Content-Type": "application/octet-stream"}, 415, "send a CSR as"),
        ("/", good, {}, 415, "unsupported media type"),
        ("/", b"garbage", {"Content-Type": PKCS10}, 400, "malformed CSR: not a CSR"),
        ("/", b"", {"Content-Type": PKCS10}, 400, "the request is empty"),
        ("/", csr_with([]).der, {"Content-Type": PKCS10}, 400, "no Enarx evidence extension"),
        (
            "/",
            software_csr(names=("*.example",)).der,
            {"Content-Type": PKCS10},
            403,
            "requested_names: DNS name '*.example': a wildcard",
        ),
        (
            "/",
            software_csr(general_names=[x509.RFC822Name("a@b.example")]).der,
            {"Content-Type": PKCS10},
            403,
            "only DNS names and IP addresses are issued",
        ),
        (
            "/",
            software_csr(names=[f"n{index}.example" for index in range(17)]).der,
            {"Content-Type": PKCS10},
            403,
            "17 names asked for, more than the 16",
        ),
        ("/api/v1/certificates", b"{}", {"Content-Type": PKCS10}, 415, "send application/json"),
        ("/api/v1/certificates", b"{", {"Content-Type": "application/json"}, 400, "Invalid JSON"),
        (
            "/api/v1/certificates",
            b'{"csr": "AAAA", "x": 1}',
            {"Content-Type": "application/json"},
            400,
            "x: Extra inputs are not permitted",
        ),
        (
            "/api/v1/certificates",
            b'{"csr": "!!!"}',
            {"Content-Type": "application/json"},
            400,
            "neither PEM nor base64",
        ),
        (
            "/api/v1/certificates",
            b'{"csr": "AAAA"}',
            {"Content-Type": "application/json"},
            400,
            "not a CSR",
        ),
    ]
    for path, body, headers, status, message in cases:
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == status, (path, headers, response.text)
        assert message in response.text, (path, response.text)


def test_oversized_bodies_are_refused_before_they_are_read(
    serve: ServeFactory, ca_file: Path, tmp_path: Path
) -> None:
    limit = DEFAULT_STEWARD_LIMITS.max_body
    url = serve(INSECURE_POLICY)
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    # A Content-Length over the limit: answered at once, the body never sent.
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as raw:
        context = client_context(ca_file)
        with context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            tls.sendall(
                f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {PKCS10}\r\n"
                f"Content-Length: {10 * limit}\r\n\r\n".encode()
            )
            answer = read_response(tls)
    assert answer.startswith("HTTP/1.1 413 ")
    assert f"over the limit of {limit}" in answer
    # A chunked body without a length: refused once it passes the limit.
    (tmp_path / "big").write_bytes(bytes(limit + 1))
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca_file), "-H", f"Content-Type: {PKCS10}",
         "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{tmp_path / 'big'}",
         "-w", "\n%{http_code}", url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.stdout.endswith("\n413"), result.stdout + result.stderr
    assert "too large" in result.stdout


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda value, oid: csr_with([(oid, value)]).der,
            st.binary(max_size=200),
            st.sampled_from([EVIDENCE_OID, WORKLOAD_DIGEST_OID, "1.3.6.1.4.1.58270.1.3"]),
        ),
    )
)
def test_hypothesis_made_csrs_never_get_a_5xx(client: TestClient, body: bytes) -> None:
    response = client.post("/", content=body, headers={"Content-Type": PKCS10})
    assert response.status_code in (400, 403), response.text
    encoded = json.dumps({"csr": base64.b64encode(body).decode()})
    response = client.post(
        "/api/v1/certificates", content=encoded, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 403), response.text


_SCHEMA_CA = generate_ca(now=CA_BORN)
_SCHEMA_CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # A body that fits the schema (any bytes, any string) is rarely a
            # signed CSR with evidence: refusing it is right.
            "positive_data_acceptance": {"enabled": False},
            # A body over the size limit is refused with 413 before it is parsed.
            "negative_data_rejection": {
                "expected-statuses": ["400", "404", "405", "406", "413", "415"]
            },
        }
    }
)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(_SCHEMA_CA, policy=parse_policy(INSECURE_POLICY)),
    config=_SCHEMA_CONFIG,
)


# A CSR body is bytes, as application/octet-stream is.
schemathesis.serializer.alias(PKCS10, "application/octet-stream")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_against_its_openapi_description(case: schemathesis.Case[Any]) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    case.validate_response(response)


def test_the_openapi_description(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    assert set(paths) == {"/", "/api/v1/certificates"}
    assert set(paths["/"]["post"]["requestBody"]["content"]) == {PKCS10}
    assert set(paths["/"]["post"]["responses"]) == {"200", "400", "403", "413", "415"}
    assert set(paths["/"]["post"]["responses"]["200"]["content"]) == {PKIPATH}
    assert client.get("/docs").status_code == 200


# -- load -------------------------------------------------------------------------------------


def test_200_concurrent_submissions_all_answered_correctly(
    serve: ServeFactory, ca_file: Path
) -> None:
    """200 CSRs from 16 client threads at once, each on its own TLS connection:
    every one answered 200 with a chain whose certificate carries its own key."""
    url = serve(INSECURE_POLICY)
    keeps = [software_csr(names=(f"keep{index}.example",)) for index in range(200)]

    def submit(index: int) -> tuple[int, bytes]:
        status, _, body = post(url, keeps[index].der, PKCS10, ca_file)
        return status, body

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(submit, range(len(keeps))))
    assert len(answers) == 200
    serials = set()
    for index, (status, body) in enumerate(answers):
        assert status == 200, body
        _, leaf = pkipath(body)
        assert (
            leaf.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == keeps[index].spki
        )
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [f"keep{index}.example"]
        serials.add(leaf.serial_number)
    assert len(serials) == 200
