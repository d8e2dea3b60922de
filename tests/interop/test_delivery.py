"""Bulk work distribution and redelivery of unacked messages."""

from helpers import pump, queue_depth

N_TASKS = 10_000


def test_10k_tasks_consumed_exactly_once_with_prefetch_3(connect, uniq):
    q = uniq("bulk")
    pub_conn = connect()
    pub = pub_conn.channel()
    pub.queue_declare(queue=q, durable=True)
    for i in range(N_TASKS):
        pub.basic_publish(exchange="", routing_key=q, body=str(i).encode())
    # A synchronous round trip on the same channel: all publishes are processed.
    assert pika_depth_eventually(pub, q, N_TASKS)

    conns = [connect(), connect()]
    seen = []
    unacked = [[], []]
    chans = []
    for idx, c in enumerate(conns):
        ch = c.channel()
        ch.basic_qos(prefetch_count=3)

        def hold(ch_, method, props, body, idx=idx):
            unacked[idx].append(method.delivery_tag)
            seen.append(int(body))
            assert not method.redelivered

        ch.basic_consume(q, hold)
        chans.append(ch)

    # Without acks each consumer holds exactly its prefetch window.
    assert pump(conns, lambda: len(seen) >= 6)
    for c in conns:
        c.process_data_events(time_limit=0.2)
    assert [len(u) for u in unacked] == [3, 3]

    # Then each acks everything as it arrives (multiple=True on the last tag).
    def ack_pending():
        for idx, ch in enumerate(chans):
            if unacked[idx]:
                ch.basic_ack(delivery_tag=unacked[idx][-1], multiple=True)
                unacked[idx].clear()

    def done():
        ack_pending()
        return len(seen) >= N_TASKS

    assert pump(conns, done, timeout=45), f"only {len(seen)} of {N_TASKS} arrived"
    for c in conns:
        c.process_data_events(time_limit=0.2)
    ack_pending()
    assert len(seen) == N_TASKS
    assert sorted(seen) == list(range(N_TASKS)), "a task was lost or duplicated"
    for ch in chans:
        ch.close()
    assert queue_depth(pub, q) == 0
    pub.queue_delete(q)


def pika_depth_eventually(ch, q, n, tries=50):
    for _ in range(tries):
        if queue_depth(ch, q) == n:
            return True
        ch.connection.sleep(0.05)
    return False


def test_unacked_messages_redelivered_when_consumer_connection_closes(connect, uniq):
    q = uniq("redeliver")
    pub = connect().channel()
    pub.queue_declare(queue=q)
    pub.confirm_delivery()
    for i in range(10):
        pub.basic_publish(exchange="", routing_key=q, body=f"m{i}".encode())

    conn_a = connect()
    a = conn_a.channel()
    a.basic_qos(prefetch_count=4)
    got_a = []
    a.basic_consume(q, lambda ch, m, p, b: got_a.append((m, b)))
    assert pump([conn_a], lambda: len(got_a) >= 4)
    assert [b for _, b in got_a] == [b"m0", b"m1", b"m2", b"m3"]
    assert not any(m.redelivered for m, _ in got_a)
    # Ack one: that frees a slot in the window, so m4 follows; then four are unacked
    # when the connection goes away.
    a.basic_ack(delivery_tag=got_a[0][0].delivery_tag)
    assert pump([conn_a], lambda: len(got_a) >= 5)
    conn_a.process_data_events(time_limit=0.1)
    assert [b for _, b in got_a] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    conn_a.close()

    conn_b = connect()
    b = conn_b.channel()
    got_b = []

    def on_b(ch, method, props, body):
        got_b.append((method.redelivered, body))
        ch.basic_ack(delivery_tag=method.delivery_tag)

    b.basic_consume(q, on_b)
    assert pump([conn_b], lambda: len(got_b) >= 9)
    conn_b.process_data_events(time_limit=0.2)
    assert len(got_b) == 9
    # Requeued messages keep their original position (head of the queue).
    assert got_b == [
        (True, b"m1"),
        (True, b"m2"),
        (True, b"m3"),
        (True, b"m4"),
    ] + [(False, f"m{i}".encode()) for i in range(5, 10)]
    assert queue_depth(pub, q) == 0
    pub.queue_delete(q)


def test_basic_get_redelivered_after_channel_close(connect, uniq):
    q = uniq("get_redeliver")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue=q)
    ch.confirm_delivery()
    ch.basic_publish(exchange="", routing_key=q, body=b"once")
    other = conn.channel()
    method, _props, body = other.basic_get(q, auto_ack=False)
    assert body == b"once" and not method.redelivered
    assert method.message_count == 0
    other.close()
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"once" and method.redelivered
    assert ch.basic_get(q)[0] is None
    ch.queue_delete(q)

