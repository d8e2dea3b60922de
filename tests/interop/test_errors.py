"""Error paths: the broker closes the channel with RabbitMQ's codes and texts."""

import pika
import pika.exceptions
import pytest


def test_passive_declare_of_missing_queue_is_404(channel):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        channel.queue_declare(queue="missing", passive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text == "NOT_FOUND - no queue 'missing' in vhost '/'"
    assert channel.is_closed


def test_passive_declare_of_missing_exchange_is_404(channel):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        channel.exchange_declare(exchange="missing-x", passive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text == "NOT_FOUND - no exchange 'missing-x' in vhost '/'"


def test_publish_to_missing_exchange_closes_channel_with_404(conn, uniq):
    x = uniq("no-such-exchange")
    ch = conn.channel()
    ch.basic_publish(exchange=x, routing_key="k", body=b"lost")
    # basic.publish has no reply: the close arrives in answer to the next sync call.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(queue="", exclusive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"
    # Only the channel died; the connection still works.
    assert conn.is_open
    other = conn.channel()
    assert other.queue_declare(queue="", exclusive=True).method.queue


def test_publish_to_missing_exchange_with_confirms_raises_404(conn, uniq):
    x = uniq("no-such-exchange")
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish(exchange=x, routing_key="k", body=b"lost")
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


def test_ack_of_unknown_delivery_tag_is_406(conn):
    ch = conn.channel()
    ch.basic_ack(delivery_tag=99)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(queue="", exclusive=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"
    assert conn.is_open


def test_double_ack_is_406(conn, uniq):
    q = uniq("double-ack")
    ch = conn.channel()
    ch.queue_declare(queue=q, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish(exchange="", routing_key=q, body=b"x")
    method, _props, _body = ch.basic_get(q, auto_ack=False)
    ch.basic_ack(delivery_tag=method.delivery_tag)
    ch.basic_ack(delivery_tag=method.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(queue="", exclusive=True)
    assert e.value.reply_code == 406
    assert (
        e.value.reply_text
        == f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}"
    )


def test_redeclare_with_different_durability_is_406(conn, uniq):
    q = uniq("inequivalent")
    ch = conn.channel()
    ch.queue_declare(queue=q, durable=False, auto_delete=True)
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch2.queue_declare(queue=q, durable=True, auto_delete=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' "
        "in vhost '/': received 'true' but current is 'false'"
    )
    ch.queue_delete(q)


def test_exclusive_queue_of_another_connection_is_405(connect, uniq):
    q = uniq("exclusive")
    owner = connect().channel()
    owner.queue_declare(queue=q, exclusive=True)
    intruder = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        intruder.basic_consume(q, lambda *a: None)
    assert e.value.reply_code == 405
    assert e.value.reply_text.startswith(
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' "
        "in vhost '/'"
    )


def test_connection_to_missing_vhost_is_refused(amqp_url):
    params = pika.URLParameters(amqp_url)
    params.virtual_host = "no-such-vhost"
    params.connection_attempts = 1
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(params)


def test_wrong_password_is_refused(amqp_url):
    params = pika.URLParameters(amqp_url)
    params.credentials = pika.PlainCredentials("guest", "wrong-password")
    params.connection_attempts = 1
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(params)
