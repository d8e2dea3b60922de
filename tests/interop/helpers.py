"""Helpers shared by the interop test modules."""

import time


def drain(channel, queue, expected, timeout=10.0, auto_ack=True):
    """Consume exactly `expected` messages from `queue` (or time out); returns bodies."""
    got = []
    for method, props, body in channel.consume(
        queue, auto_ack=auto_ack, inactivity_timeout=timeout
    ):
        if method is None:
            break
        got.append(body)
        if len(got) >= expected:
            break
    channel.cancel()
    return got


def pump(connections, until, timeout=10.0):
    """Process I/O on all `connections` until `until()` is true; returns its last value."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            return until()
        for c in connections:
            c.process_data_events(time_limit=0.01)
    return True


def queue_depth(channel, queue):
    """Ready-message count of `queue`, via a passive declare."""
    return channel.queue_declare(queue, passive=True).method.message_count


def get_all(channel, queue):
    """basic.get (auto-ack) until the queue is empty; returns the bodies as str in order."""
    out = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body.decode("utf-8"))
