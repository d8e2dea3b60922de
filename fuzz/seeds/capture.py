#!/usr/bin/env python3
"""Captures real client bytes for the connection target's seeds: a pika client talks to a
running broker (AMQP on 127.0.0.1:35700, management on 35701) through a small TCP proxy that
records what the client sends; then the broker's definitions export is fetched. Writes
fuzz/corpus/connection/captured-pika-*.bin (mode byte 0: the raw stream, header included) and
fuzz/corpus/definitions/warren-export.json.

    target/debug/warren --data-dir /tmp/x --port 35700 --management-port 35701 \
        --prometheus-port 35702 &
    python3 fuzz/seeds/capture.py
"""
import base64
import pathlib
import socket
import threading
import urllib.request

import pika

FUZZ = pathlib.Path(__file__).resolve().parent.parent
BROKER = ("127.0.0.1", 35700)


def proxy(listener, record):
    client, _ = listener.accept()
    upstream = socket.create_connection(BROKER)

    def pump(src, dst, keep):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if keep:
                record.append(data)
            dst.sendall(data)

    t = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
    t.start()
    pump(client, upstream, True)
    t.join(5)


def session(name, work):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    record = []
    t = threading.Thread(target=proxy, args=(listener, record), daemon=True)
    t.start()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
    work(conn)
    conn.close()
    t.join(5)
    out = FUZZ / "corpus" / "connection" / f"captured-pika-{name}.bin"
    out.write_bytes(b"\x00" + b"".join(record))


def topology(conn):
    ch = conn.channel()
    ch.exchange_declare("orders", "topic", durable=True)
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare("orders.q", durable=True,
                     arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx"})
    ch.queue_declare("dead", durable=True)
    ch.queue_bind("orders.q", "orders", "order.#")
    ch.queue_bind("dead", "dlx")
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("orders", "order.new", b"order %d" % i,
                         pika.BasicProperties(delivery_mode=2, headers={"n": i}))
    m, _, body = ch.basic_get("orders.q")
    ch.basic_nack(m.delivery_tag, requeue=False)


def consume(conn):
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x" * 1000, pika.BasicProperties(expiration="60000"))
    for m, _, _ in ch.consume(q, inactivity_timeout=1):
        if m is None:
            break
        ch.basic_ack(m.delivery_tag)
    ch.cancel()
    ch.tx_select()
    ch.basic_publish("", q, b"tx")
    ch.tx_rollback()
    ch.close()


session("topology", topology)
session("consume-tx", consume)
req = urllib.request.Request(
    "http://127.0.0.1:35701/api/definitions",
    headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
with urllib.request.urlopen(req) as r:
    (FUZZ / "corpus" / "definitions" / "warren-export.json").write_bytes(r.read())
