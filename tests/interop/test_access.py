"""Access control with pika (issue 13). The broker has imported the definitions RabbitMQ 3.10.8
exported (tests/fixtures/rabbitmq-3.10.8-definitions.json); every expected text below is what
RabbitMQ 3.10.8 sent pika for the same operation with the same definitions."""

from urllib.parse import urlparse

import pika
import pytest


def params(amqp_url, user, password, vhost):
    u = urlparse(amqp_url)
    return pika.ConnectionParameters(
        u.hostname, u.port, vhost, pika.PlainCredentials(user, password), socket_timeout=5
    )


@pytest.fixture
def login(amqp_url):
    opened = []

    def _login(user, password, vhost):
        c = pika.BlockingConnection(params(amqp_url, user, password, vhost))
        opened.append(c)
        return c

    yield _login
    for c in opened:
        if c.is_open:
            c.close()


def channel_error(ch, op):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        op(ch)
    return (e.value.reply_code, e.value.reply_text)


def publish_confirmed(ch, exchange, key, props=None):
    ch.confirm_delivery()
    ch.basic_publish(exchange, key, b"x", props)


def test_denials_match_rabbitmq(login):
    app = login("app", "app-secret", "prod")
    assert channel_error(app.channel(), lambda ch: publish_confirmed(ch, "amq.topic", "payments.x")) == (
        403,
        "ACCESS_REFUSED - access to topic 'payments.x' in exchange 'amq.topic' in vhost 'prod' refused for user 'app'",
    )
    assert channel_error(app.channel(), lambda ch: ch.queue_declare("other.q")) == (
        403,
        "ACCESS_REFUSED - access to queue 'other.q' in vhost 'prod' refused for user 'app'",
    )
    assert channel_error(app.channel(), lambda ch: ch.queue_bind("app.q", "amq.topic", "payments.x")) == (
        403,
        "ACCESS_REFUSED - access to exchange 'amq.topic' in vhost 'prod' refused for user 'app'",
    )
    assert channel_error(
        app.channel(), lambda ch: ch.queue_declare("app.dlq", arguments={"x-dead-letter-exchange": "other.dlx"})
    ) == (403, "ACCESS_REFUSED - access to exchange 'other.dlx' in vhost 'prod' refused for user 'app'")
    # An impersonator may publish with another user_id; the connection is still usable.
    publish_confirmed(app.channel(), "app.events", "app.x", pika.BasicProperties(user_id="bob"))
    reader = login("reader", "readpass", "prod")
    assert channel_error(reader.channel(), lambda ch: publish_confirmed(ch, "", "k")) == (
        403,
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost 'prod' refused for user 'reader'",
    )
    admin = login("admin", "adminpass", "prod")
    assert channel_error(
        admin.channel(), lambda ch: publish_confirmed(ch, "", "app.q", pika.BasicProperties(user_id="bob"))
    ) == (406, "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'admin'")
    assert admin.is_open and reader.is_open and app.is_open


def test_vhost_access_and_limits_match_rabbitmq(login):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        login("app", "app-secret", "staging")
    assert "NOT_ALLOWED - access to vhost 'staging' refused for user 'app'" in str(e.value)
    first = login("admin", "adminpass", "staging")
    ch = first.channel()
    for i in range(3):
        ch.queue_declare("limit-q%d" % i)
    assert channel_error(ch, lambda ch: ch.queue_declare("limit-q3")) == (
        406,
        "PRECONDITION_FAILED - cannot declare queue 'limit-q3': queue limit in vhost 'staging' (3) is reached",
    )
    login("admin", "adminpass", "staging")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        login("admin", "adminpass", "staging")
    assert (
        "NOT_ALLOWED - access to vhost 'staging' refused for user 'admin': connection limit (2) is reached"
        in str(e.value)
    )
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        login("app", "nope", "prod")
    assert (
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
        in str(e.value)
    )


def test_update_secret_is_accepted_as_rabbitmq_does(login):
    """RabbitMQ's internal backend cannot expire: `connection.update-secret` is answered with
    update-secret-ok and the connection carries on (rabbit_access_control:update_state/2)."""
    app = login("app", "app-secret", "prod")
    app.update_secret("app-secret", "rotation")
    ch = app.channel()
    publish_confirmed(ch, "app.events", "app.x")
    assert app.is_open
