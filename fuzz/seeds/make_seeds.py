#!/usr/bin/env python3
"""Writes the seed corpora of the whole-broker fuzz targets into fuzz/corpus/<target>/.

Run from anywhere: python3 fuzz/seeds/make_seeds.py. Needs pika (tests/interop/requirements.txt)
for the connection seeds: the AMQP frames are pika 1.3.2's own encoding of what it sends
(pika.frame ... .marshal()), the byte stream a pika client writes after connecting.
"""
import json
import os
import pathlib

import pika.frame
import pika.spec as s

FUZZ = pathlib.Path(__file__).resolve().parent.parent
PROPS = s.BasicProperties


def write(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def m(ch, method):
    return pika.frame.Method(ch, method).marshal()


def content(ch, body, props=None, frame_max=131072):
    out = pika.frame.Header(ch, len(body), props or PROPS()).marshal()
    step = frame_max - 8
    for i in range(0, len(body), step):
        out += pika.frame.Body(ch, body[i:i + step]).marshal()
    return out


def handshake():
    caps = {
        "publisher_confirms": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "authentication_failure_close": True,
        "basic.nack": True,
        "exchange_exchange_bindings": True,
    }
    return (
        b"AMQP\x00\x00\x09\x01"
        + m(0, s.Connection.StartOk(
            client_properties={"product": "Pika Python Client Library", "capabilities": caps},
            mechanism="PLAIN", response="\0guest\0guest", locale="en_US"))
        + m(0, s.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=60))
        + m(0, s.Connection.Open(virtual_host="/"))
    )


# --- connection: mode byte 0 = raw stream with the handshake in it; 1 = handshake done, raw.
hello = m(1, s.Channel.Open())
flows = {
    "publish-get-ack": hello
    + m(1, s.Queue.Declare(queue="q"))
    + m(1, s.Basic.Publish(exchange="", routing_key="q"))
    + content(1, b"hello", PROPS(delivery_mode=2, headers={"h": 1}))
    + m(1, s.Basic.Get(queue="q"))
    + m(1, s.Basic.Ack(delivery_tag=1)),
    "confirm-consume": hello
    + m(1, s.Confirm.Select())
    + m(1, s.Queue.Declare(queue="q2", arguments={"x-max-length": 2, "x-overflow": "reject-publish"}))
    + m(1, s.Basic.Qos(prefetch_count=1))
    + m(1, s.Basic.Consume(queue="q2", consumer_tag="c1"))
    + b"".join(m(1, s.Basic.Publish(exchange="", routing_key="q2")) + content(1, b"m%d" % i) for i in range(4))
    + m(1, s.Basic.Nack(delivery_tag=1, requeue=True))
    + m(1, s.Basic.Cancel(consumer_tag="c1")),
    "topology": hello
    + m(1, s.Exchange.Declare(exchange="x", type="topic", durable=True))
    + m(1, s.Exchange.Declare(exchange="dlx", type="fanout"))
    + m(1, s.Queue.Declare(queue="q", durable=True, arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx"}))
    + m(1, s.Queue.Bind(queue="q", exchange="x", routing_key="a.*"))
    + m(1, s.Exchange.Bind(destination="amq.fanout", source="x", routing_key="#"))
    + m(1, s.Basic.Publish(exchange="x", routing_key="a.b"))
    + content(1, b"t", PROPS(expiration="0"))
    + m(1, s.Queue.Purge(queue="q"))
    + m(1, s.Queue.Unbind(queue="q", exchange="x", routing_key="a.*"))
    + m(1, s.Queue.Delete(queue="q"))
    + m(1, s.Exchange.Delete(exchange="x")),
    "tx-close": hello
    + m(2, s.Channel.Open())
    + m(2, s.Tx.Select())
    + m(2, s.Basic.Publish(exchange="amq.direct", routing_key="k", mandatory=True))
    + content(2, b"x" * 300)
    + m(2, s.Tx.Commit())
    + m(2, s.Tx.Rollback())
    + m(1, s.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    + m(0, s.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)),
    "stream": hello
    + m(1, s.Queue.Declare(queue="st", durable=True, arguments={"x-queue-type": "stream"}))
    + m(1, s.Basic.Qos(prefetch_count=10))
    + m(1, s.Basic.Publish(exchange="", routing_key="st")) + content(1, b"s1")
    + m(1, s.Basic.Consume(queue="st", consumer_tag="c2", arguments={"x-stream-offset": "first"})),
    "content-out-of-place": hello
    + content(1, b"orphan body")
    + m(1, s.Basic.Publish(exchange="", routing_key="q"))
    + m(1, s.Basic.Get(queue="q"))
    + pika.frame.Heartbeat().marshal(),
}
for name, frames in flows.items():
    write("connection", f"raw-{name}.bin", b"\x00" + handshake() + frames)
    write("connection", f"after-handshake-{name}.bin", b"\x01" + frames)
write("connection", "raw-handshake-only.bin", b"\x00" + handshake())
write("connection", "raw-bad-header.bin", b"\x00AMQP\x01\x01\x00\x09")

# Structured (mode 2; 6 = small pieces; 10 = frame_max 4096): see fuzz_targets/connection.rs.
OPEN = [0x40, 0]
DECLARE_Q = [0x40, 8, 1, 1, 0, 0, 0, 0, 0]
PUBLISH_Q = [0x40, 18, 0, 1, 0, 1, 1, 4, 0, 0, 1, 2, 2]
GET_Q = [0x40, 22, 1, 0]
ACK = [0x40, 23, 1, 0]
CONSUME_Q = [0x40, 15, 1, 1, 1, 0, 1, 0, 0]
BODY_ALONE = [0x46, 2, 0, 0, 0, 2]
structured = {
    "publish-get": OPEN + DECLARE_Q + PUBLISH_Q + GET_Q + ACK,
    "consume": OPEN + DECLARE_Q + CONSUME_Q + PUBLISH_Q + PUBLISH_Q + ACK,
    "orphan-body": OPEN + BODY_ALONE + PUBLISH_Q,
}
for name, ops in structured.items():
    write("connection", f"structured-{name}.bin", bytes([2] + ops))
    write("connection", f"structured-pieces-{name}.bin", bytes([0x36] + ops))
    write("connection", f"structured-small-frames-{name}.bin", bytes([10] + ops))

# --- definitions: RabbitMQ-style files.
rabbit = {
    "rabbit_version": "3.13.7",
    "rabbitmq_version": "3.13.7",
    "product_name": "RabbitMQ",
    "product_version": "3.13.7",
    "users": [
        {"name": "guest", "password_hash": "BMfxN8drrYcIqXZMr+pWTpDT0nMcOagMduLX0bjr4jwud/pN",
         "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}},
        {"name": "app", "password_hash": "", "tags": "monitoring,management", "limits": {"max-connections": 10}},
    ],
    "vhosts": [{"name": "/", "limits": [], "metadata": {"description": "Default virtual host", "tags": []}},
               {"name": "dev"}],
    "permissions": [{"user": "app", "vhost": "dev", "configure": ".*", "write": "^app\\.", "read": ".*"}],
    "topic_permissions": [{"user": "app", "vhost": "dev", "exchange": "amq.topic", "write": "^a", "read": ".*"}],
    "parameters": [{"value": {"max-connections": 5}, "vhost": "dev", "component": "vhost-limits", "name": "limits"}],
    "global_parameters": [{"name": "cluster_name", "value": "rabbit@host"},
                          {"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-x"}],
    "policies": [{"vhost": "/", "name": "ttl", "pattern": "^ttl\\.", "apply-to": "queues",
                  "definition": {"message-ttl": 1000, "max-length": 10, "overflow": "reject-publish"},
                  "priority": 1}],
    "operator_policies": [{"vhost": "/", "name": "cap", "pattern": ".*", "apply-to": "queues",
                           "definition": {"max-length": 1000}, "priority": 0}],
    "queues": [
        {"name": "orders", "vhost": "/", "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 5}},
        {"name": "ttl.q", "vhost": "/", "durable": True, "auto_delete": False,
         "arguments": {"x-message-ttl": 60000, "x-dead-letter-exchange": "dlx"}},
        {"name": "events", "vhost": "dev", "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "stream", "x-max-age": "1D"}},
    ],
    "exchanges": [
        {"name": "dlx", "vhost": "/", "type": "fanout", "durable": True, "auto_delete": False,
         "internal": False, "arguments": {}},
        {"name": "t", "vhost": "/", "type": "topic", "durable": True, "auto_delete": False,
         "internal": False, "arguments": {"alternate-exchange": "dlx"}},
    ],
    "bindings": [
        {"source": "t", "vhost": "/", "destination": "orders", "destination_type": "queue",
         "routing_key": "order.#", "arguments": {}},
        {"source": "t", "vhost": "/", "destination": "dlx", "destination_type": "exchange",
         "routing_key": "", "arguments": {"x-match": "any"}},
    ],
}
write("definitions", "rabbitmq-3.13.json", json.dumps(rabbit, indent=1))
write("definitions", "empty-object.json", "{}")
write("definitions", "queues-only.json",
      json.dumps({"queues": [{"name": "q", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}]}))
write("definitions", "not-a-list.json", '{"users": {"name": "x"}}')
write("definitions", "unknown-keys.json", '{"explicit_id": 1, "queues": null, "bindings": []}')

# --- http_api: requests as the target reads them (see fuzz_targets/http_api.rs).
J = "content-type: application/json\n"
reqs = {
    "overview": "GET /api/overview\n\n",
    "declare-publish-get": "\n===\n".join([
        f"PUT /api/queues/%2F/q\n{J}\n" + '{"durable":true,"arguments":{"x-max-length":3}}',
        f"PUT /api/exchanges/%2F/x\n{J}\n" + '{"type":"direct"}',
        f"POST /api/bindings/%2F/e/x/q\n{J}\n" + '{"routing_key":"k"}',
        f"POST /api/exchanges/%2F/x/publish\n{J}\n"
        + '{"properties":{"delivery_mode":2},"routing_key":"k","payload":"aGk=","payload_encoding":"base64"}',
        f"POST /api/queues/%2F/q/get\n{J}\n" + '{"count":2,"ackmode":"ack_requeue_false","encoding":"auto","truncate":50000}',
        "GET /api/queues/%2F/q/bindings\n\n",
        "DELETE /api/queues/%2F/q?if-empty=true\n\n",
    ]),
    "users-permissions": "\n===\n".join([
        f"PUT /api/users/bob\n{J}\n" + '{"password":"pw","tags":"monitoring"}',
        f"PUT /api/permissions/%2F/bob\n{J}\n" + '{"configure":".*","write":".*","read":".*"}',
        "GET /api/users/bob/permissions\n\n",
        "GET /api/whoami\nauthorization: Basic Ym9iOnB3\n\n",
        f"POST /api/users/bulk-delete\n{J}\n" + '{"users":["bob"]}',
    ]),
    "policies-limits": "\n===\n".join([
        f"PUT /api/policies/%2F/p\n{J}\n" + '{"pattern":"^q","definition":{"max-length":1},"apply-to":"queues","priority":2}',
        f"PUT /api/vhost-limits/%2F/max-queues\n{J}\n" + '{"value":10}',
        f"PUT /api/vhosts/dev\n{J}\n" + '{"description":"d","tags":"a,b"}',
        f"PUT /api/parameters/shovel/%2F/s\n{J}\n" + '{"value":{}}',
        "GET /api/policies?page=1&page_size=10&name=p&use_regex=true\n\n",
        "DELETE /api/vhosts/dev\n\n",
    ]),
    "definitions": "GET /api/definitions\n\n\n===\nPOST /api/definitions/%2F\n" + J + "\n"
    + json.dumps({"queues": [{"name": "dq", "durable": True, "auto_delete": False, "arguments": {}}]}),
    "lists-sorting": "GET /api/queues?sort=messages&sort_reverse=true&columns=name,messages&page=2\n\n\n===\n"
    "GET /api/connections\n\n\n===\nGET /api/channels\n\n\n===\nGET /api/nodes/rabbit@localhost?memory=true\n\n",
    "health": "GET /api/health/checks/certificate-expiration/1/months\n\n\n===\n"
    "GET /api/health/checks/port-listener/5672\n\n\n===\nGET /api/aliveness-test/%2F\n\n",
    "no-auth-options": "OPTIONS /api/queues\nauthorization: none\n\n\n===\nDELETE /api/overview\n\n\n===\n"
    "GET /\n\n\n===\nGET /api/nope\n\n\n===\nHEAD /api/exchanges/%2F/amq.direct\n\n",
    "bad-json": f"PUT /api/queues/%2F/q\n{J}\n" + '{"durable":"yes","arguments":[1]}' + "\n===\n"
    f"PUT /api/users/x\n{J}\n" + '{"password_hash":"!!","hashing_algorithm":"md5"}',
}
for name, text in reqs.items():
    write("http_api", f"{name}.txt", text)

if __name__ == "__main__":
    pass
