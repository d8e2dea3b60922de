"""Built-in plugin exchanges with pika: consistent-hash, delayed message, deduplication.

Arguments, headers and error texts are those of the RabbitMQ plugins
(rabbitmq_consistent_hash_exchange, rabbitmq_delayed_message_exchange,
rabbitmq-message-deduplication), so these tests also pass against a RabbitMQ with them enabled.
"""

import time

import pika
import pika.exceptions
import pytest


def depth(channel, queue):
    return channel.queue_declare(queue, passive=True).method.message_count


def drain(channel, queue):
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body.decode(), props))


def test_consistent_hash_spreads_by_weight_and_keeps_keys_together(channel, uniq):
    x = uniq("chx")
    channel.confirm_delivery()
    channel.exchange_declare(x, "x-consistent-hash", auto_delete=True)
    queues = [uniq(f"chq{i}") for i in range(3)]
    for q, weight in zip(queues, ["1", "1", "2"]):
        channel.queue_declare(q, exclusive=True)
        channel.queue_bind(q, x, routing_key=weight)
    for i in range(2000):
        channel.basic_publish(x, f"key-{i}", b"m")
    counts = [depth(channel, q) for q in queues]
    assert sum(counts) == 2000
    # Weights 1:1:2 -> about 500, 500, 1000.
    assert all(abs(c - want) < want * 0.15 for c, want in zip(counts, [500, 500, 1000])), counts
    for q in queues:
        channel.queue_purge(q)
    for _ in range(20):
        channel.basic_publish(x, "same-key", b"m")
    assert sorted(depth(channel, q) for q in queues) == [0, 0, 20]


def test_consistent_hash_bad_weight_is_406(conn, uniq):
    ch = conn.channel()
    x = uniq("chx")
    q = uniq("chq")
    ch.exchange_declare(x, "x-consistent-hash", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_bind(q, x, routing_key="heavy")
    assert e.value.reply_code == 406
    assert e.value.reply_text == 'PRECONDITION_FAILED - The binding key must be an integer: <<"heavy">>'


def test_delayed_messages_arrive_in_due_order_with_x_delay_negated(channel, uniq):
    x = uniq("delayed")
    q = uniq("dq")
    channel.confirm_delivery()
    channel.exchange_declare(
        x, "x-delayed-message", auto_delete=True, arguments={"x-delayed-type": "direct"}
    )
    channel.queue_declare(q, exclusive=True)
    channel.queue_bind(q, x, "k")
    for body, delay in [("third", 600), ("first", 200), ("second", 400)]:
        channel.basic_publish(x, "k", body.encode(), pika.BasicProperties(headers={"x-delay": delay}))
    channel.basic_publish(x, "k", b"now")
    assert depth(channel, q) == 1
    deadline = time.time() + 10
    while depth(channel, q) < 4 and time.time() < deadline:
        time.sleep(0.05)
    got = drain(channel, q)
    assert [b for b, _ in got] == ["now", "first", "second", "third"]
    assert got[1][1].headers["x-delay"] == -200


def test_delayed_exchange_without_type_is_406(conn, uniq):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare(uniq("bad"), "x-delayed-message")
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must bean existing exchnage type"
    )


def test_deduplication_exchange_drops_repeats_and_confirms_them(channel, uniq):
    x = uniq("dedup")
    q = uniq("ddq")
    channel.confirm_delivery()
    channel.exchange_declare(
        x, "x-message-deduplication", auto_delete=True, arguments={"x-cache-size": 100}
    )
    channel.queue_declare(q, exclusive=True)
    channel.queue_bind(q, x, "")
    for key in ["a", "a", "b", "a"]:
        # Each publish is confirmed (pika raises on a nack), duplicates included.
        channel.basic_publish(
            x, "", key.encode(), pika.BasicProperties(headers={"x-deduplication-header": key})
        )
    assert [b for b, _ in drain(channel, q)] == ["a", "b"]
