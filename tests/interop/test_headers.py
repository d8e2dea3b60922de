"""Message properties and header tables round-trip through the broker unchanged."""

import datetime
import decimal

import pika
import pika.exceptions
import pytest

from helpers import pump

# Every field-table value type pika 1.x can encode. pika has no encoder for `float`
# (it raises UnsupportedAMQPFieldException), so floats cannot be sent by pika at all.
HEADERS = {
    "str": "hello",
    "unicode": "h\u00e9llo w\u00f6rld \u2603",
    "empty_str": "",
    "int": 42,
    "negative_int": -7,
    "int32_max": 2**31 - 1,
    "int32_min": -(2**31),
    "big_int": 2**40 + 3,  # 'l' (64-bit)
    "zero": 0,
    "true": True,
    "false": False,
    "decimal": decimal.Decimal("3.14"),
    "negative_decimal": decimal.Decimal("-12.5"),
    "integral_decimal": decimal.Decimal("1000"),
    "timestamp": datetime.datetime(2022, 9, 1, 12, 30, 45),
    "list": [1, "two", True, None, [3, 4], {"k": "v"}],
    "empty_list": [],
    "nested": {"a": 1, "b": {"c": "deep", "d": [1, 2]}, "e": {}},
    "bytes": b"\x00\x01\xfe\xffbin",
    "none": None,
}


def test_pika_has_no_float_encoder():
    with pytest.raises(pika.exceptions.UnsupportedAMQPFieldException):
        pika.BasicProperties(headers={"f": 1.5}).encode()


def test_headers_of_every_type_round_trip(connect, uniq):
    q = uniq("headers")
    ch = connect().channel()
    ch.queue_declare(queue=q, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish(
        exchange="",
        routing_key=q,
        body=b"with headers",
        properties=pika.BasicProperties(headers=HEADERS),
    )
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None
    assert body == b"with headers"
    got = props.headers
    expected = HEADERS
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == value, key
        assert isinstance(got[key], type(value)), key


def test_all_basic_properties_round_trip_via_consume(connect, uniq):
    q = uniq("props")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue=q, exclusive=True)
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"x-trace": "abc", "n": 1},
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply.here",
        expiration="60000",
        message_id="msg-1",
        timestamp=1662035445,
        type="order.created",
        user_id="guest",
        app_id="interop",
    )
    body = bytes(range(256)) * 600  # > frame_max: split over several body frames
    ch.basic_publish(exchange="", routing_key=q, body=body, properties=sent)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, p, b)), auto_ack=True)
    assert pump([conn], lambda: len(got) == 1)
    _method, props, rbody = got[0]
    assert rbody == body
    for field in (
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        assert getattr(props, field) == getattr(sent, field), field


def test_empty_body_and_no_properties(connect, uniq):
    q = uniq("empty")
    ch = connect().channel()
    ch.queue_declare(queue=q, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish(exchange="", routing_key=q, body=b"")
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None
    assert body == b""
    assert props.headers is None
    assert props.content_type is None
    assert props.delivery_mode is None
