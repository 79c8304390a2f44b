import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import pytest
from aiohttp import ClientSession, web

from cartd.receiver import (
    Received,
    Receiver,
    describe,
    parse_listen,
    print_delivery,
    print_rejection,
    serve,
)
from cartd.signing import Signer
from harness import new_secret

SECRET = new_secret()
PAYLOAD = {
    "type": "abandoned_cart.detected",
    "integration": {"id": "i-1", "platform": "shopify", "mode": "mock"},
    "abandoned_carts": [{"cart_id": "mock_1", "total_value": 39.98}],
    "recovery_analytics": {"total_carts": 1, "total_value": 39.98, "currency": "USD"},
}
BODY = json.dumps(PAYLOAD).encode()

Start = Callable[[Receiver], Awaitable[str]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Receiver] = []

    async def _start(receiver: Receiver) -> str:
        port = await receiver.start()
        started.append(receiver)
        return f"http://127.0.0.1:{port}/webhook"

    yield _start
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


def signed(
    webhook_id: str = "msg_1", body: bytes = BODY, secrets: tuple[str, ...] = (SECRET,)
) -> dict[str, str]:
    return {
        **Signer(secrets).headers(webhook_id, int(time.time()), body),
        "content-type": "application/json",
    }


async def test_signed_delivery_is_accepted_and_recorded(start: Start, http: ClientSession) -> None:
    heard: list[Received] = []
    receiver = Receiver((SECRET,), on_delivery=heard.append)
    url = await start(receiver)
    headers = signed()
    async with http.post(url, data=BODY, headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {"ok": True}
    [received] = receiver.received
    assert heard == [received]
    assert received.verified
    assert received.webhook_id == "msg_1"
    assert received.timestamp == int(headers["webhook-timestamp"])
    assert received.body == BODY
    assert received.headers["webhook-signature"] == headers["webhook-signature"]
    assert received.payload["recovery_analytics"]["total_value"] == Decimal("39.98")
    assert received.payload["abandoned_carts"][0]["cart_id"] == "mock_1"
    assert received.received_at == pytest.approx(time.time(), abs=5)


async def test_old_secret_accepts_rotation(start: Start, http: ClientSession) -> None:
    new = new_secret()
    receiver = Receiver((SECRET,))
    url = await start(receiver)
    async with http.post(url, data=BODY, headers=signed(secrets=(new, SECRET))) as response:
        assert response.status == 200
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    "headers, body",
    [
        pytest.param(signed(), BODY.replace(b"39.98", b"9.98"), id="tampered-body"),
        pytest.param(
            {**signed(), "webhook-timestamp": str(int(time.time()) - 1)}, BODY, id="tampered-timestamp"
        ),
        pytest.param(signed(secrets=(new_secret(),)), BODY, id="other-secret"),
        pytest.param(
            {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time()))}, BODY, id="unsigned"
        ),
    ],
)
async def test_bad_signature_is_rejected_and_not_recorded(
    start: Start, http: ClientSession, headers: dict[str, str], body: bytes
) -> None:
    rejected: list[tuple[str, str]] = []
    receiver = Receiver((SECRET,), on_reject=lambda *rejection: rejected.append(rejection))
    url = await start(receiver)
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 401
        assert "error" in await response.json()
    assert receiver.received == []
    assert [webhook_id for webhook_id, _ in rejected] == ["msg_1"]


async def test_without_secrets_accepts_unverified(start: Start, http: ClientSession) -> None:
    receiver = Receiver()
    url = await start(receiver)
    async with http.post(url, data=BODY, headers=signed()) as response:
        assert response.status == 200
    [received] = receiver.received
    assert not received.verified


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="text"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"\xff", id="binary"),
    ],
)
@pytest.mark.parametrize("secrets", [(), (SECRET,)], ids=["unsigned-receiver", "signed-receiver"])
async def test_body_that_is_not_a_json_object_is_400(
    start: Start, http: ClientSession, body: bytes, secrets: tuple[str, ...]
) -> None:
    receiver = Receiver(secrets)
    url = await start(receiver)
    async with http.post(url, data=body, headers=signed(body=body)) as response:
        assert response.status == 400
        assert "error" in await response.json()
    assert receiver.received == []


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp"])
async def test_missing_standard_headers_are_400_without_secrets(
    start: Start, http: ClientSession, missing: str
) -> None:
    receiver = Receiver()
    url = await start(receiver)
    headers = signed()
    del headers[missing]
    async with http.post(url, data=BODY, headers=headers) as response:
        assert response.status == 400
        assert missing in (await response.json())["error"]
    assert receiver.received == []


async def test_any_path_accepts_post_only(start: Start, http: ClientSession) -> None:
    receiver = Receiver((SECRET,))
    url = await start(receiver)
    other = url.replace("/webhook", "/hooks/cartd")
    async with http.post(other, data=BODY, headers=signed()) as response:
        assert response.status == 200
    async with http.get(url) as response:
        assert response.status == 405
    assert len(receiver.received) == 1


async def test_status_for_scripts_answers(start: Start, http: ClientSession) -> None:
    script = itertools.chain([503, 503], itertools.repeat(200))
    receiver = Receiver((SECRET,), status_for=lambda received: next(script))
    url = await start(receiver)
    statuses = []
    for _ in range(3):
        async with http.post(url, data=BODY, headers=signed("msg_retry")) as response:
            statuses.append(response.status)
    assert statuses == [503, 503, 200]
    assert [r.webhook_id for r in receiver.received] == ["msg_retry"] * 3


async def test_status_for_may_return_a_response(start: Start, http: ClientSession) -> None:
    def too_many(received: Received) -> web.Response:
        return web.json_response({}, status=429, headers={"Retry-After": "7"})

    receiver = Receiver(status_for=too_many)
    url = await start(receiver)
    async with http.post(url, data=BODY, headers=signed()) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"


async def test_wait_for_wakes_on_arrival(start: Start, http: ClientSession) -> None:
    receiver = Receiver((SECRET,))
    url = await start(receiver)
    waiter = asyncio.create_task(receiver.wait_for(lambda received: len(received) >= 2, timeout=10))
    for webhook_id in ("msg_a", "msg_b"):
        assert not waiter.done()
        async with http.post(url, data=BODY, headers=signed(webhook_id)) as response:
            assert response.status == 200
    await waiter
    await receiver.wait_for(lambda received: received[0].webhook_id == "msg_a", timeout=0)


async def test_wait_for_times_out(start: Start) -> None:
    receiver = Receiver()
    await start(receiver)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await receiver.wait_for(lambda received: bool(received), timeout=0.1)
    assert 0.09 <= time.monotonic() - began < 2


async def test_printed_lines(
    start: Start, http: ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = Receiver((SECRET,), on_delivery=print_delivery, on_reject=print_rejection)
    url = await start(receiver)
    async with http.post(url, data=BODY, headers=signed("msg_ok")) as response:
        assert response.status == 200
    async with http.post(url, data=BODY + b" ", headers=signed("msg_bad")) as response:
        assert response.status == 401
    assert capsys.readouterr().out.splitlines() == [
        "msg_ok abandoned_cart.detected platform=shopify carts=1 total_value=39.98 USD verified",
        "msg_bad REJECTED no signature matches",
    ]


def test_describe_tolerates_foreign_payloads() -> None:
    received = Received("msg_x", 0, {}, b"{}", {"type": 3, "integration": "?"}, False, 0.0)
    assert describe(received) == "msg_x 3 platform=? carts=0 total_value=? unverified"


@pytest.mark.parametrize(
    "listen, expected",
    [
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8787", ":8787", "host:", "host:port", "host:70000"])
async def test_serve_rejects_bad_listen(listen: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        await serve(listen, None)


async def test_serve_rejects_bad_secret() -> None:
    with pytest.raises(ValueError, match="--secret"):
        await serve("127.0.0.1:0", "not-a-secret")
