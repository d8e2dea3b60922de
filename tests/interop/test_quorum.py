"""Quorum queues as pika sees them (checked against RabbitMQ 3.10.8): x-delivery-count on
redeliveries, x-delivery-limit dead-lettering with reason delivery_limit, declare refusals."""

import pika
import pika.exceptions
import pytest

QUORUM = {"x-queue-type": "quorum"}


def test_delivery_count_and_limit(conn, uniq):
    ch = conn.channel()
    ch.confirm_delivery()
    q, dlq = uniq("qq"), uniq("qq-dlq")
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(
        q,
        durable=True,
        arguments=dict(
            QUORUM,
            **{"x-delivery-limit": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
        ),
    )
    try:
        ch.basic_publish("", q, b"m", pika.BasicProperties(headers={"h": 1}))
        counts = []
        for _ in range(2):
            method, props, _ = ch.basic_get(q)
            assert method is not None
            counts.append((method.redelivered, props.headers.get("x-delivery-count"), props.headers["h"]))
            ch.basic_nack(method.delivery_tag, requeue=True)
        assert counts == [(False, 0, 1), (True, 1, 1)]
        assert ch.basic_get(q, auto_ack=True)[0] is None
        method, props, _ = ch.basic_get(dlq, auto_ack=True)
        assert method is not None
        assert "x-delivery-count" not in props.headers
        assert props.headers["x-first-death-reason"] == "delivery_limit"
        assert props.headers["x-death"][0]["reason"] == "delivery_limit"
        assert props.headers["x-death"][0]["queue"] == q
    finally:
        ch.queue_delete(q)
        ch.queue_delete(dlq)


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"durable": False}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        ({"durable": True, "exclusive": True}, "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
        ({"durable": True, "auto_delete": True}, "invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
        (
            {"durable": False, "arguments": {"x-max-priority": 5}},
            "invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            {"durable": True, "arguments": {"x-queue-mode": "lazy"}},
            "invalid arg 'x-queue-mode' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue",
        ),
    ],
)
def test_declare_refusals(connect, uniq, kwargs, text):
    conn = connect()
    ch = conn.channel()
    q = uniq("qq-refused")
    args = dict(QUORUM, **kwargs.pop("arguments", {}))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, arguments=args, **kwargs)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - " + text.format(q=q)
    # The connection is still usable.
    ch2 = conn.channel()
    ch2.queue_declare(q, durable=True, arguments=dict(QUORUM, **{"x-quorum-initial-group-size": 3}))
    ch2.queue_delete(q)
