"""Further everyday client paths: reject/nack, purge, cancel notification, tx, headers and
exchange-to-exchange routing."""

import pika
import pika.exceptions

from helpers import get_all, pump, queue_depth


def _queue_with(ch, q, bodies):
    ch.queue_declare(queue=q, exclusive=True)
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish(exchange="", routing_key=q, body=b.encode())


def test_nack_requeue_and_reject_drop(conn, uniq):
    q = uniq("nack")
    ch = conn.channel()
    _queue_with(ch, q, ["a", "b"])
    m1, _, b1 = ch.basic_get(q)
    m2, _, b2 = ch.basic_get(q)
    assert (b1, b2) == (b"a", b"b")
    ch.basic_nack(delivery_tag=m1.delivery_tag, requeue=True)
    ch.basic_reject(delivery_tag=m2.delivery_tag, requeue=False)
    m3, _, b3 = ch.basic_get(q, auto_ack=True)
    assert b3 == b"a" and m3.redelivered
    assert ch.basic_get(q)[0] is None


def test_nack_multiple(conn, uniq):
    q = uniq("nack-multi")
    ch = conn.channel()
    _queue_with(ch, q, ["1", "2", "3"])
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(delivery_tag=tags[-1], multiple=True, requeue=True)
    assert get_all(ch, q) == ["1", "2", "3"]


def test_purge_reports_count(conn, uniq):
    q = uniq("purge")
    ch = conn.channel()
    _queue_with(ch, q, [str(i) for i in range(7)])
    assert ch.queue_purge(q).method.message_count == 7
    assert queue_depth(ch, q) == 0


def test_queue_delete_cancels_consumer(connect, uniq):
    q = uniq("cancel-notify")
    admin = connect().channel()
    admin.queue_declare(queue=q)
    conn = connect()
    ch = conn.channel()
    cancelled = []
    ch.basic_consume(q, lambda *a: None)
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    assert admin.queue_delete(q).method.message_count == 0
    assert pump([conn], lambda: len(cancelled) == 1)
    assert isinstance(cancelled[0].method, pika.spec.Basic.Cancel)
    assert ch.is_open


def test_tx_commit_and_rollback(conn, uniq):
    q = uniq("tx")
    ch = conn.channel()
    ch.queue_declare(queue=q, exclusive=True)
    ch.tx_select()
    ch.basic_publish(exchange="", routing_key=q, body=b"rolled back")
    ch.tx_rollback()
    assert queue_depth(ch, q) == 0
    ch.basic_publish(exchange="", routing_key=q, body=b"committed")
    assert queue_depth(ch, q) == 0
    ch.tx_commit()
    assert get_all(ch, q) == ["committed"]


def test_headers_exchange_all_and_any(conn, uniq):
    x = uniq("hdrs")
    ch = conn.channel()
    ch.exchange_declare(exchange=x, exchange_type="headers", auto_delete=True)
    q_all = ch.queue_declare(queue="", exclusive=True).method.queue
    q_any = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(q_all, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, x, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    ch.confirm_delivery()
    for name, headers in [
        ("both", {"format": "pdf", "type": "report"}),
        ("pdf-log", {"format": "pdf", "type": "log"}),
        ("zip-log", {"format": "zip", "type": "log"}),
        ("none", {"format": "zip"}),
    ]:
        ch.basic_publish(
            exchange=x,
            routing_key="",
            body=name.encode(),
            properties=pika.BasicProperties(headers=headers),
        )
    assert get_all(ch, q_all) == ["both"]
    assert get_all(ch, q_any) == ["both", "pdf-log", "zip-log"]


def test_exchange_to_exchange_binding(conn, uniq):
    src, dst = uniq("e2e-src"), uniq("e2e-dst")
    ch = conn.channel()
    ch.exchange_declare(exchange=src, exchange_type="topic", auto_delete=True)
    ch.exchange_declare(exchange=dst, exchange_type="direct", auto_delete=True)
    ch.exchange_bind(destination=dst, source=src, routing_key="a.*")
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(q, dst, routing_key="a.b")
    ch.confirm_delivery()
    for k in ("a.b", "a.c", "b.b"):
        ch.basic_publish(exchange=src, routing_key=k, body=k.encode())
    assert get_all(ch, q) == ["a.b"]


def test_default_exchange_cannot_be_bound(conn, uniq):
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    try:
        ch.queue_bind(q, "", routing_key="x")
        raise AssertionError("binding to the default exchange succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 403
        assert e.reply_text == (
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
