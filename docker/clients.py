#!/usr/bin/env python3
"""pika client steps for docker/test.sh, one subcommand each. Exit 0 on success; on failure,
one line on stderr saying what differed."""

import argparse
import json
import ssl
import sys
import time

import pika


def connect(args, attempts=1):
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=args.port,
        virtual_host="/",
        credentials=pika.PlainCredentials(args.user, args.password),
        connection_attempts=attempts,
        retry_delay=0.2,
        blocked_connection_timeout=30,
    )
    if args.tls_ca:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        params.ssl_options = pika.SSLOptions(ctx, server_hostname="localhost")
    return pika.BlockingConnection(params)


def fail(message):
    print(f"clients.py {sys.argv[1]}: {message}", file=sys.stderr)
    sys.exit(1)


def cmd_info(args):
    """Prints what the broker negotiated and announced, as JSON."""
    conn = connect(args, attempts=50)
    impl = conn._impl
    def prop(key):
        value = impl.server_properties.get(key, "")
        return value.decode() if isinstance(value, bytes) else value

    # Warren reports RabbitMQ's product and version (clients detect features by them) and
    # names itself in `warren_version`.
    print(
        json.dumps(
            {
                "channel_max": impl.params.channel_max,
                "frame_max": impl.params.frame_max,
                "product": prop("product"),
                "warren_version": prop("warren_version"),
            }
        )
    )
    conn.close()


def cmd_publish(args):
    """Declares the durable queue and publishes persistent messages `prefix-i` with confirms."""
    conn = connect(args)
    ch = conn.channel()
    ch.queue_declare(args.queue, durable=True)
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(args.start, args.start + args.count):
        ch.basic_publish("", args.queue, f"m-{i}".encode(), props, mandatory=True)
    conn.close()


def cmd_verify(args):
    """Checks the queue holds exactly `count` messages m-0..m-{count-1}, in order (consumed and
    acknowledged with --consume, else only counted)."""
    conn = connect(args, attempts=50)
    ch = conn.channel()
    depth = ch.queue_declare(args.queue, durable=True, passive=True).method.message_count
    if depth != args.count:
        fail(f"queue {args.queue!r} holds {depth} messages, expected {args.count}")
    if args.consume:
        for i in range(args.count):
            method, props, body = ch.basic_get(args.queue, auto_ack=False)
            if method is None:
                fail(f"message {i} missing")
            if body != f"m-{i}".encode():
                fail(f"message {i} is {body!r}")
            if props.delivery_mode != 2:
                fail(f"message {i} lost its persistence (delivery_mode {props.delivery_mode})")
            ch.basic_ack(method.delivery_tag)
        left = ch.queue_declare(args.queue, durable=True, passive=True).method.message_count
        if left != 0:
            fail(f"{left} messages left after consuming")
    conn.close()


def cmd_queue_exists(args):
    """Checks that `queue` exists (passive declare)."""
    conn = connect(args, attempts=50)
    ch = conn.channel()
    try:
        ch.queue_declare(args.queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        fail(f"queue {args.queue!r}: {e.reply_code} {e.reply_text}")
    conn.close()


def cmd_hold(args):
    """Opens a connection, writes `ready` to --out, then waits until the broker closes it and
    writes the close's code and text as JSON."""
    conn = connect(args)
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    with open(args.out, "w") as f:
        f.write("ready\n")
    deadline = time.monotonic() + args.timeout
    result = {"code": None, "text": "no close within the timeout"}
    try:
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
    except pika.exceptions.ConnectionClosedByBroker as e:
        result = {"code": e.reply_code, "text": e.reply_text}
    except pika.exceptions.AMQPConnectionError as e:
        result = {"code": None, "text": f"connection lost without a close: {e!r}"}
    with open(args.out, "w") as f:
        json.dump(result, f)
        f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("command", choices=["info", "publish", "verify", "queue-exists", "hold"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--queue", default="docker-durable")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--consume", action="store_true")
    p.add_argument("--out")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--tls-ca", help="connect over TLS, verifying the broker against this CA")
    args = p.parse_args()
    {
        "info": cmd_info,
        "publish": cmd_publish,
        "verify": cmd_verify,
        "queue-exists": cmd_queue_exists,
        "hold": cmd_hold,
    }[args.command](args)


if __name__ == "__main__":
    main()
