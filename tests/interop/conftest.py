"""Shared fixtures for the pika interop tests.

The broker is taken from env WARREN_AMQP_URL (default: a local broker on 5672).
"""

import os
import uuid

import pika
import pytest

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


@pytest.fixture(scope="session")
def amqp_url():
    return os.environ.get("WARREN_AMQP_URL", DEFAULT_URL)


@pytest.fixture
def connect(amqp_url):
    """Factory that opens BlockingConnections and closes them all at teardown."""
    opened = []

    def _connect():
        params = pika.URLParameters(amqp_url)
        params.connection_attempts = 3
        params.retry_delay = 0.2
        params.socket_timeout = 5
        params.blocked_connection_timeout = 10
        conn = pika.BlockingConnection(params)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        if conn.is_open:
            try:
                conn.close()
            except Exception:
                pass


@pytest.fixture
def conn(connect):
    return connect()


@pytest.fixture
def channel(conn):
    return conn.channel()


@pytest.fixture
def uniq():
    """Unique name generator so tests never collide (also on a shared RabbitMQ)."""

    def _uniq(prefix):
        return f"interop.{prefix}.{uuid.uuid4().hex[:10]}"

    return _uniq

