"""RabbitMQ 3.10.8 corners that clients' own test suites exercise (expected values are what
RabbitMQ 3.10.8 answered to the same calls): queue arguments accepted for compatibility, and
x-max-length-bytes with every overflow mode."""

import pika
import pika.exceptions
import pytest


@pytest.mark.parametrize(
    "args",
    [
        {"x-queue-mode": "lazy"},
        {"x-queue-mode": "default"},
        {"x-queue-version": 1},
        {"x-queue-version": 2},
        {"x-queue-master-locator": "min-masters"},
        {"x-queue-master-locator": "client-local"},
        {"x-queue-master-locator": "random"},
    ],
)
def test_compatibility_arguments_are_accepted(conn, uniq, args):
    ch = conn.channel()
    q = uniq("args")
    assert ch.queue_declare(queue=q, arguments=args).method.queue == q
    ch.queue_delete(queue=q)


@pytest.mark.parametrize(
    "args,why",
    [
        ({"x-queue-mode": "bogus"}, "\"unsupported queue mode 'bogus'\""),
        ({"x-queue-mode": 5}, "{unacceptable_type,signedint}"),
        ({"x-queue-version": 3}, "\"unsupported queue version '3'\""),
        ({"x-queue-version": "2"}, '"expected integer, got longstr"'),
    ],
)
def test_bad_compatibility_arguments_get_rabbitmq_errors(conn, uniq, args, why):
    ch = conn.channel()
    q = uniq("badargs")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(queue=q, arguments=args)
    assert e.value.reply_code == 406
    key = next(iter(args))
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' in vhost '/': {why}"
    )
    assert conn.is_open


def _drain(ch, q):
    out = []
    while True:
        method, _props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append(body.decode())


@pytest.mark.parametrize(
    "mode,confirms,kept,dead",
    [
        ("reject-publish", ["ack", "ack", "nack", "ack", "nack"], ["aaaa", "bbbb", "dd"], []),
        (
            "reject-publish-dlx",
            ["ack", "ack", "nack", "ack", "nack"],
            ["aaaa", "bbbb", "dd"],
            ["cccc", "e"],
        ),
        ("drop-head", ["ack"] * 5, ["cccc", "dd", "e"], ["aaaa", "bbbb"]),
    ],
)
def test_max_length_bytes_with_each_overflow_mode(conn, uniq, mode, confirms, kept, dead):
    ch = conn.channel()
    ch.confirm_delivery()
    dlx, dlq, q = uniq("bdlx"), uniq("bdlq"), uniq("bytes")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(
        q,
        arguments={
            "x-max-length-bytes": 10,
            "x-overflow": mode,
            "x-dead-letter-exchange": dlx,
        },
    )
    got = []
    for body in ["aaaa", "bbbb", "cccc", "dd", "e"]:
        try:
            ch.basic_publish("", q, body.encode())
            got.append("ack")
        except pika.exceptions.NackError:
            got.append("nack")
    assert got == confirms
    assert _drain(ch, q) == kept
    # Dead-lettering happens before the confirm of the publish that caused it.
    assert _drain(ch, dlq) == dead
