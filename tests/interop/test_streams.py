"""Stream queues (x-queue-type: stream) with pika, as RabbitMQ 3.10.8 answers them."""

import pika
import pika.exceptions
import pytest

STREAM = {"x-queue-type": "stream"}


def read(channel, queue, n, offset, prefetch=100, timeout=10.0):
    """Consumes `n` messages from `queue` starting at `offset`: (x-stream-offset, body)."""
    channel.basic_qos(prefetch_count=prefetch)
    got = []
    for method, props, body in channel.consume(
        queue, arguments={"x-stream-offset": offset}, inactivity_timeout=timeout
    ):
        if method is None:
            break
        got.append((props.headers["x-stream-offset"], body))
        channel.basic_ack(method.delivery_tag)
        if len(got) >= n:
            break
    channel.cancel()
    return got


def test_stream_offsets_and_headers(conn, connect, uniq):
    q = uniq("stream")
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=STREAM)
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish(
            "", q, b"m%d" % i, pika.BasicProperties(headers={"h": i})
        )
    reader = connect().channel()
    assert read(reader, q, 6, "first") == [(i, b"m%d" % i) for i in range(6)]
    assert read(reader, q, 2, 4) == [(4, b"m4"), (5, b"m5")]
    assert read(reader, q, 1, "last") == [(5, b"m5")]
    assert read(reader, q, 6, "1h") == [(i, b"m%d" % i) for i in range(6)]
    ch.queue_delete(q)


def test_stream_refusals(connect, uniq):
    q = uniq("stream")
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, durable=False, arguments=STREAM)
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}' in vhost '/'"
    )
    ch = connect().channel()
    ch.queue_declare(q, durable=True, arguments=STREAM)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_consume(q, lambda *a: None)
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{q}' in vhost '/''"
    )
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.basic_get(q)
    assert e.value.reply_code == 540
    assert e.value.reply_text == (
        f"NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{q}' in vhost '/'"
    )
    connect().channel().queue_delete(q)
