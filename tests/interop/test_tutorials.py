"""RabbitMQ tutorials 1-7, as written for pika, with their outcomes asserted."""

import uuid

import pika
import pika.exceptions
import pytest

from helpers import drain, get_all, pump, queue_depth


# --- 1. Hello World ---------------------------------------------------------


def test_t1_hello_world(connect, uniq):
    q = uniq("hello")
    send_conn = connect()
    send = send_conn.channel()
    declared = send.queue_declare(queue=q)
    assert declared.method.queue == q
    assert declared.method.message_count == 0
    assert declared.method.consumer_count == 0
    send.basic_publish(exchange="", routing_key=q, body=b"Hello World!")
    send_conn.close()

    recv = connect().channel()
    recv.queue_declare(queue=q)
    received = []

    def callback(ch, method, properties, body):
        received.append(body)
        ch.stop_consuming()

    tag = recv.basic_consume(queue=q, on_message_callback=callback, auto_ack=True)
    assert tag.startswith("ctag")
    recv.connection.call_later(10, recv.stop_consuming)
    recv.start_consuming()
    assert received == [b"Hello World!"]
    recv.queue_delete(q)


# --- 2. Work queues ---------------------------------------------------------


def test_t2_work_queue_fair_dispatch(connect, uniq):
    q = uniq("task_queue")
    pub = connect().channel()
    pub.queue_declare(queue=q, durable=True)
    pub.confirm_delivery()
    for i in range(6):
        pub.basic_publish(
            exchange="",
            routing_key=q,
            body=f"task {i}".encode(),
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent
            ),
        )
    assert queue_depth(pub, q) == 6

    # Worker A takes one task (prefetch 1) and sits on it without acking.
    conn_a, conn_b = connect(), connect()
    a = conn_a.channel()
    a.basic_qos(prefetch_count=1)
    got_a = []
    a.basic_consume(q, lambda ch, m, p, b: got_a.append((m, p, b)))
    assert pump([conn_a], lambda: len(got_a) >= 1)
    assert got_a[0][1].delivery_mode == 2
    # ...and gets nothing more while that one is unacked.
    conn_a.process_data_events(time_limit=0.3)
    assert len(got_a) == 1

    # Worker B, also prefetch 1 with manual acks, does all the remaining work.
    b = conn_b.channel()
    b.basic_qos(prefetch_count=1)
    got_b = []

    def work_b(ch, method, props, body):
        got_b.append(body)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    b.basic_consume(q, work_b)
    assert pump([conn_a, conn_b], lambda: len(got_b) >= 5)
    conn_a.process_data_events(time_limit=0.2)
    assert len(got_a) == 1
    assert sorted([got_a[0][2]] + got_b) == sorted(
        f"task {i}".encode() for i in range(6)
    )

    # A acks; the queue ends empty with nothing left unacked.
    a.basic_ack(delivery_tag=got_a[0][0].delivery_tag)
    conn_a.process_data_events(time_limit=0.2)
    a.close()
    b.close()
    assert queue_depth(pub, q) == 0
    pub.queue_delete(q)


# --- 3. Publish/Subscribe ---------------------------------------------------


def test_t3_fanout_pub_sub(connect, uniq):
    x = uniq("logs")
    pub = connect().channel()
    pub.exchange_declare(exchange=x, exchange_type="fanout")

    subscribers = []
    for _ in range(2):
        ch = connect().channel()
        ch.exchange_declare(exchange=x, exchange_type="fanout")
        result = ch.queue_declare(queue="", exclusive=True)
        name = result.method.queue
        assert name.startswith("amq.gen-")
        ch.queue_bind(exchange=x, queue=name)
        subscribers.append((ch, name))
    assert subscribers[0][1] != subscribers[1][1]

    pub.confirm_delivery()
    for i in range(3):
        pub.basic_publish(exchange=x, routing_key="", body=f"log {i}".encode())
    for ch, name in subscribers:
        assert get_all(ch, name) == ["log 0", "log 1", "log 2"]

    # An exclusive server-named queue goes away with its connection.
    ch0, name0 = subscribers[0]
    ch0.connection.close()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        connect().channel().queue_declare(name0, passive=True)
    assert e.value.reply_code == 404
    pub.exchange_delete(x)


# --- 4. Routing -------------------------------------------------------------


def test_t4_direct_routing(connect, uniq):
    x = uniq("direct_logs")
    ch = connect().channel()
    ch.exchange_declare(exchange=x, exchange_type="direct")
    q_err = ch.queue_declare(queue="", exclusive=True).method.queue
    q_all = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=x, queue=q_err, routing_key="error")
    for severity in ("info", "warning", "error"):
        ch.queue_bind(exchange=x, queue=q_all, routing_key=severity)

    ch.confirm_delivery()
    for severity in ("info", "warning", "error", "debug"):
        ch.basic_publish(exchange=x, routing_key=severity, body=severity.encode())
    assert get_all(ch, q_err) == ["error"]
    assert get_all(ch, q_all) == ["info", "warning", "error"]

    ch.queue_unbind(exchange=x, queue=q_all, routing_key="info")
    ch.basic_publish(exchange=x, routing_key="info", body=b"info2")
    ch.basic_publish(exchange=x, routing_key="error", body=b"error2")
    assert get_all(ch, q_err) == ["error2"]
    assert get_all(ch, q_all) == ["error2"]
    ch.exchange_delete(x)


# --- 5. Topics --------------------------------------------------------------


def test_t5_topics(connect, uniq):
    x = uniq("topic_logs")
    ch = connect().channel()
    ch.exchange_declare(exchange=x, exchange_type="topic")
    q1 = ch.queue_declare(queue="", exclusive=True).method.queue
    q2 = ch.queue_declare(queue="", exclusive=True).method.queue
    q_all = ch.queue_declare(queue="", exclusive=True).method.queue
    q_kern = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=x, queue=q1, routing_key="*.orange.*")
    ch.queue_bind(exchange=x, queue=q2, routing_key="*.*.rabbit")
    ch.queue_bind(exchange=x, queue=q2, routing_key="lazy.#")
    ch.queue_bind(exchange=x, queue=q_all, routing_key="#")
    ch.queue_bind(exchange=x, queue=q_kern, routing_key="kern.*")

    keys = [
        "quick.orange.rabbit",  # Q1, Q2
        "lazy.orange.elephant",  # Q1, Q2
        "quick.orange.fox",  # Q1
        "lazy.brown.fox",  # Q2
        "lazy.pink.rabbit",  # Q2 once, although it matches both bindings
        "quick.brown.fox",  # nobody
        "orange",  # nobody
        "quick.orange.new.rabbit",  # nobody
        "lazy.orange.new.rabbit",  # Q2
        "lazy",  # Q2: '#' matches zero words
        "kern.critical",  # kern.*
        "kern",  # not kern.*: '*' needs exactly one word
        "",  # only '#'
    ]
    ch.confirm_delivery()
    for k in keys:
        ch.basic_publish(exchange=x, routing_key=k, body=(k or "<empty>").encode())

    assert get_all(ch, q1) == [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
    ]
    assert get_all(ch, q2) == [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "lazy.orange.new.rabbit",
        "lazy",
    ]
    assert get_all(ch, q_all) == [k or "<empty>" for k in keys]
    assert get_all(ch, q_kern) == ["kern.critical"]
    ch.exchange_delete(x)


# --- 6. RPC -----------------------------------------------------------------


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def test_t6_rpc(connect, uniq):
    rpc_queue = uniq("rpc_queue")
    server_conn = connect()
    server = server_conn.channel()
    server.queue_declare(queue=rpc_queue)
    server.basic_qos(prefetch_count=1)

    def on_request(ch, method, props, body):
        n = int(body)
        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=str(fib(n)).encode(),
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)

    server.basic_consume(queue=rpc_queue, on_message_callback=on_request)

    client_conn = connect()
    client = client_conn.channel()
    callback_queue = client.queue_declare(queue="", exclusive=True).method.queue
    responses = {}

    def on_response(ch, method, props, body):
        responses[props.correlation_id] = int(body)

    client.basic_consume(
        queue=callback_queue, on_message_callback=on_response, auto_ack=True
    )

    expected = {}
    for n in (0, 1, 10, 20, 25):
        corr_id = str(uuid.uuid4())
        expected[corr_id] = fib(n)
        client.basic_publish(
            exchange="",
            routing_key=rpc_queue,
            properties=pika.BasicProperties(
                reply_to=callback_queue, correlation_id=corr_id
            ),
            body=str(n).encode(),
        )
    assert pump([client_conn, server_conn], lambda: len(responses) == len(expected))
    assert responses == expected
    server.queue_delete(rpc_queue)


# --- 7. Publisher confirms --------------------------------------------------


def test_t7_publisher_confirms(connect, uniq):
    conn = connect()
    caps = conn._impl.server_capabilities
    assert caps.get("publisher_confirms") is True
    assert caps.get("basic.nack") is True

    q = uniq("confirms")
    ch = conn.channel()
    ch.queue_declare(queue=q)
    ch.confirm_delivery()

    # Individually confirmed publishes: pika raises if any were nacked.
    for i in range(200):
        ch.basic_publish(exchange="", routing_key=q, body=f"m{i}".encode())
    assert queue_depth(ch, q) == 200

    # Mandatory to a routable key succeeds.
    ch.basic_publish(exchange="", routing_key=q, body=b"routable", mandatory=True)
    assert queue_depth(ch, q) == 201

    # Mandatory to an unroutable key: basic.return then ack -> UnroutableError.
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish(
            exchange="",
            routing_key=uniq("nowhere"),
            body=b"lost",
            mandatory=True,
        )
    assert len(e.value.messages) == 1
    returned = e.value.messages[0]
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.body == b"lost"

    # Not mandatory and unroutable: silently dropped, still confirmed.
    ch.basic_publish(exchange="", routing_key=uniq("nowhere"), body=b"dropped")
    # The channel is still usable afterwards.
    assert queue_depth(ch, q) == 201
    assert len(drain(ch, q, 201)) == 201
    ch.queue_delete(q)
