"""TC3-HMAC-SHA256: the signature TencentCloud's SDKs put on every request, checked here against the one
SecretId/SecretKey pair the TencentCloud-compatible API was started with.

The client signs a canonical request (method, path, query, the headers it lists in ``SignedHeaders`` with
their values as sent, the SHA-256 of the raw body) under a key derived from its SecretKey, the UTC date and the
service (``scf``); ``verify`` rebuilds the same text from what arrived and compares in constant time. So a
changed body, Host header or timestamp fails the check as surely as a wrong key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from ..core.errors import ScfError

ALGORITHM = "TC3-HMAC-SHA256"
SERVICE = "scf"
MAX_SKEW_S = 300.0  # TencentCloud refuses a request signed more than 5 minutes away from its clock
_AUTH = re.compile(r"^TC3-HMAC-SHA256 +Credential=([^,\s]+) *, *SignedHeaders=([^,\s]+) *, *Signature=([0-9a-f]{64})$")


@dataclass(frozen=True)
class Request:
    """What the signature covers, as it arrived: ``headers`` looked up by lower-case name."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


def sign(secret_key: str, date: str, string_to_sign: str) -> str:
    """The hex signature of ``string_to_sign`` under the key derived from ``secret_key`` for ``date`` (UTC,
    ``YYYY-MM-DD``) and the scf service, as the SDK's ``Sign.sign_tc3`` computes it."""
    key = _hmac(("TC3" + secret_key).encode(), date)
    for part in (SERVICE, "tc3_request"):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def string_to_sign(req: Request, signed_headers: list[str], timestamp: str, date: str) -> str:
    """The text a client signs for ``req``: the algorithm, its timestamp, its scope and the SHA-256 of the
    canonical request."""
    canonical_headers = "".join(f"{name}:{req.headers.get(name, '').strip()}\n" for name in signed_headers)
    payload = hashlib.sha256(req.body).hexdigest()
    canonical = "\n".join([req.method.upper(), req.path, req.query, canonical_headers, ";".join(signed_headers),
                           payload])
    scope = f"{date}/{SERVICE}/tc3_request"
    return "\n".join([ALGORITHM, timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def verify(req: Request, secret_id: str, secret_key: str, now: float | None = None) -> None:
    """Accept ``req`` only if it is signed with ``secret_id``'s key, within five minutes of ``now``.

    Raises:
        ScfError: ``AuthFailure.SignatureFailure`` (no Authorization header, a signature that does not match,
            a body not covered by it), ``AuthFailure.InvalidAuthorization`` (a header not in TC3 form, a
            credential scope other than ``DATE/scf/tc3_request`` of the timestamp's date, content-type or host
            not signed), ``AuthFailure.SecretIdNotFound`` (another SecretId), ``AuthFailure.SignatureExpire``
            (no timestamp, or one more than five minutes off).
    """
    header = req.headers.get("authorization", "")
    if not header:
        raise ScfError("AuthFailure.SignatureFailure", "the request is not signed: no Authorization header "
                                                       "(sign it with TC3-HMAC-SHA256, as the TencentCloud SDK does)")
    match = _AUTH.match(header.strip())
    if match is None:
        raise ScfError("AuthFailure.InvalidAuthorization", "the Authorization header is not of the form 'TC3-HMAC-"
                                                           "SHA256 Credential=ID/DATE/scf/tc3_request, "
                                                           "SignedHeaders=content-type;host, Signature=HEX'")
    credential, headers_text, signature = match.groups()
    parts = credential.split("/")
    if len(parts) != 4:
        raise ScfError("AuthFailure.InvalidAuthorization", f"bad Credential {credential!r}: use "
                                                           "SECRET_ID/DATE/scf/tc3_request")
    sent_id, date, service, terminator = parts
    if not hmac.compare_digest(sent_id.encode(), secret_id.encode()):
        raise ScfError("AuthFailure.SecretIdNotFound", "this SecretId is unknown here")
    timestamp = _timestamp(req, now)
    expected_date = datetime.fromtimestamp(int(timestamp), timezone.utc).strftime("%Y-%m-%d")
    if service != SERVICE or terminator != "tc3_request" or date != expected_date:
        raise ScfError("AuthFailure.InvalidAuthorization", f"bad credential scope {date}/{service}/{terminator}: "
                                                           f"expected {expected_date}/{SERVICE}/tc3_request")
    signed_headers = headers_text.split(";")
    if not {"content-type", "host"} <= set(signed_headers) or signed_headers != sorted(set(signed_headers)):
        raise ScfError("AuthFailure.InvalidAuthorization", "SignedHeaders must list content-type and host (names "
                                                           f"in lower case, sorted), got {headers_text!r}")
    if req.headers.get("x-tc-content-sha256", "").upper() == "UNSIGNED-PAYLOAD":
        raise ScfError("AuthFailure.SignatureFailure", "unsigned payloads are refused: the signature must cover "
                                                       "the body (leave ClientProfile.unsignedPayload off)")
    wanted = sign(secret_key, date, string_to_sign(req, signed_headers, timestamp, date))
    if not hmac.compare_digest(wanted.encode(), signature.encode()):
        raise ScfError("AuthFailure.SignatureFailure", "the signature does not match: check the SecretKey, and "
                                                       "that the request was not changed after it was signed")


def _timestamp(req: Request, now: float | None) -> str:
    text = req.headers.get("x-tc-timestamp", "").strip()
    if not text.isdigit():
        raise ScfError("AuthFailure.SignatureExpire", "X-TC-Timestamp is missing or not epoch seconds")
    skew = int(text) - (time.time() if now is None else now)
    if abs(skew) > MAX_SKEW_S:
        raise ScfError("AuthFailure.SignatureExpire", f"the request was signed {abs(skew):.0f} s "
                                                      f"{'ahead of' if skew > 0 else 'before'} this server's clock; "
                                                      f"at most {MAX_SKEW_S:.0f} s are accepted")
    return text


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()
