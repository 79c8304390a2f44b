"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """A request whose signature does not verify."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret."""
    if not secret.startswith(PREFIX):
        raise ValueError("secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError("secret is not base64") from None
    if not key:
        raise ValueError("secret is empty")
    return key


class Signer:
    """Signs with every configured secret, newest first (rotation)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self._keys = tuple(decode_secret(s) for s in secrets)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def signature(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
        return " ".join(
            "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            for key in self._keys
        )

    def headers(self, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        headers = {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp)}
        if self._keys:
            headers["webhook-signature"] = self.signature(webhook_id, timestamp, body)
        return headers

    def verify(self, headers: dict[str, str], body: bytes, now: float | None = None) -> str:
        """Check a received request; returns its webhook-id or raises SignatureError."""
        lowered = {k.lower(): v for k, v in headers.items()}
        webhook_id = lowered.get("webhook-id")
        stamp = lowered.get("webhook-timestamp")
        received = lowered.get("webhook-signature")
        if not webhook_id or not stamp or not received:
            raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
        try:
            timestamp = int(stamp)
        except ValueError:
            raise SignatureError("webhook-timestamp is not an integer") from None
        now = time.time() if now is None else now
        if abs(now - timestamp) > TOLERANCE_SECONDS:
            raise SignatureError("webhook-timestamp is more than 5 minutes off")
        expected = set(self.signature(webhook_id, timestamp, body).split(" "))
        if not any(
            hmac.compare_digest(candidate, wanted)
            for candidate in received.split(" ")
            for wanted in expected
        ):
            raise SignatureError("no signature matches")
        return webhook_id
