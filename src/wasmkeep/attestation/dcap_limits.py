"""Hard limits on the DCAP inputs that come from outside (quotes, collateral, CSR
extensions), kept together so they can be read and reviewed in one place.

They are far above what Intel's services and quoting enclaves produce (a TDX
quote is about 5 KB, a TCB Info about 10 KB, a PCK CRL a few KB) and far
below what would let a hostile peer make a verifier allocate or work much.
"""

from __future__ import annotations

__all__ = [
    "MAX_CERTIFICATION_DATA_BYTES",
    "MAX_CHAIN_CERTIFICATES",
    "MAX_COLLATERAL_JSON_BYTES",
    "MAX_CRL_BYTES",
    "MAX_ENARX_CRLS",
    "MAX_ENARX_EXTENSION_BYTES",
    "MAX_QE_AUTH_DATA_BYTES",
    "MAX_QUOTE_BYTES",
    "MAX_TCB_LEVELS",
]

#: A whole quote buffer, including the zero padding some captures append.
MAX_QUOTE_BYTES = 64 * 1024
#: QE authentication data (Intel's QE puts 32 bytes there).
MAX_QE_AUTH_DATA_BYTES = 4 * 1024
#: Certification data (a PEM chain of three certificates is about 3.7 KB).
MAX_CERTIFICATION_DATA_BYTES = 32 * 1024
#: Certificates in one chain (PCK chain, issuer chains): leaf, CA, root, and one spare.
MAX_CHAIN_CERTIFICATES = 4
#: One TCB Info or QE Identity response, or one dcap-qvl collateral file.
MAX_COLLATERAL_JSON_BYTES = 256 * 1024
#: TCB levels in a TCB Info, in a QE Identity, or in a TDX module identity.
MAX_TCB_LEVELS = 256
#: One CRL (DER or PEM).
MAX_CRL_BYTES = 1024 * 1024
#: The Enarx SGX CSR extension, and the CRLs it may carry.
MAX_ENARX_EXTENSION_BYTES = 1024 * 1024
MAX_ENARX_CRLS = 8
