import base64
import os
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from cartd.signing import SignatureError, Signer, decode_secret
from harness import SECRET, new_secret

VECTOR_SECRET = SECRET  # the Standard Webhooks reference vector's secret
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = '{"type":"abandoned_cart.detected","total_value":39.98,"name":"Zoë"}'.encode()


def test_reference_vector() -> None:
    signer = Signer((VECTOR_SECRET,))
    assert signer.signature(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert signer.headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    stamp = datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=timezone.utc)
    assert Webhook(VECTOR_SECRET).sign(VECTOR_ID, stamp, VECTOR_BODY.decode()) == VECTOR_SIGNATURE


def test_reference_vector_verifies_at_its_time() -> None:
    signer = Signer((VECTOR_SECRET,))
    headers = signer.headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert signer.verify(headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10) == VECTOR_ID


def test_no_secret_no_signature_header() -> None:
    signer = Signer(())
    assert not signer
    assert signer.headers("msg_1", 1700000000, BODY) == {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
    }


def test_rotation_signs_with_every_secret_and_each_verifies() -> None:
    new, old = new_secret(), new_secret()
    headers = Signer((new, old)).headers("msg_rot", int(time.time()), BODY)
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2
    assert all(entry.startswith("v1,") for entry in entries)
    for secret in (new, old):
        assert Webhook(secret).verify(BODY, headers)["total_value"] == 39.98
        assert Signer((secret,)).verify(headers, BODY) == "msg_rot"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(SignatureError):
        Signer((new_secret(),)).verify(headers, BODY)


def test_header_names_are_case_insensitive() -> None:
    secret = new_secret()
    headers = Signer((secret,)).headers("msg_case", int(time.time()), BODY)
    upper = {name.upper(): value for name, value in headers.items()}
    assert Signer((secret,)).verify(upper, BODY) == "msg_case"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b.replace(b"39.98", b"39.99")), id="body"),
        pytest.param(lambda h, b: (h, b + b" "), id="body-whitespace"),
        pytest.param(
            lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
            id="timestamp",
        ),
        pytest.param(lambda h, b: ({**h, "webhook-id": "msg_other"}, b), id="id"),
    ],
)
def test_tampering_is_rejected(tamper) -> None:
    secret = new_secret()
    headers = Signer((secret,)).headers("msg_t", int(time.time()), BODY)
    headers, body = tamper(headers, BODY)
    with pytest.raises(SignatureError):
        Signer((secret,)).verify(headers, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_or_future_timestamp_is_rejected(offset: int) -> None:
    secret = new_secret()
    headers = Signer((secret,)).headers("msg_old", int(time.time()) + offset, BODY)
    with pytest.raises(SignatureError, match="5 minutes"):
        Signer((secret,)).verify(headers, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_rejected(missing: str) -> None:
    secret = new_secret()
    headers = Signer((secret,)).headers("msg_m", int(time.time()), BODY)
    del headers[missing]
    with pytest.raises(SignatureError, match="missing"):
        Signer((secret,)).verify(headers, BODY)


def test_non_integer_timestamp_is_rejected() -> None:
    secret = new_secret()
    headers = Signer((secret,)).headers("msg_n", int(time.time()), BODY)
    headers["webhook-timestamp"] = "soon"
    with pytest.raises(SignatureError, match="integer"):
        Signer((secret,)).verify(headers, BODY)


@pytest.mark.parametrize(
    "secret, message",
    [
        (SECRET.removeprefix("whsec_"), "whsec_"),
        ("whsec_not base64!", "base64"),
        ("whsec_abc", "base64"),
        ("whsec_", "empty"),
    ],
)
def test_bad_secrets_raise_value_error(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_secret(secret)
    with pytest.raises(ValueError, match=message):
        Signer((secret,))


def test_decode_secret_returns_the_hmac_key() -> None:
    key = os.urandom(24)
    assert decode_secret("whsec_" + base64.b64encode(key).decode()) == key
