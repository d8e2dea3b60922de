"""The Prometheus endpoint, parsed with prometheus_client's text parsers.

Every family Warren serves must exist in RabbitMQ 3.10.8's output (fixtures captured from a
local 3.10.8 with rabbitmq_prometheus) with the same type and HELP text. The endpoint is taken
from env WARREN_METRICS_URL (default: a local broker on 15692).
"""

import os
import pathlib
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

FIXTURES = (
    pathlib.Path(__file__).resolve().parents[2]
    / "crates"
    / "warren-metrics"
    / "tests"
    / "fixtures"
)


@pytest.fixture(scope="module")
def metrics_url():
    return os.environ.get("WARREN_METRICS_URL", "http://127.0.0.1:15692")


def fetch(url, accept=None):
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers.get("Content-Type"), resp.read().decode()


def families(text):
    return {f.name: f for f in parse_text(text)}


def rabbitmq(fixture):
    return families((FIXTURES / fixture).read_text())


@pytest.fixture
def traffic(connect, uniq):
    conn = connect()
    ch = conn.channel()
    q = uniq("metrics")
    ch.queue_declare(q)
    for _ in range(3):
        ch.basic_publish("", q, b"hello")
    return q


@pytest.mark.parametrize(
    "path,fixture",
    [
        ("/metrics", "rabbitmq-3.10.8-metrics.txt"),
        ("/metrics/per-object", "rabbitmq-3.10.8-per-object-with-connection.txt"),
        (
            "/metrics/detailed?family=queue_coarse_metrics&family=queue_metrics"
            "&family=connection_coarse_metrics&family=connection_metrics"
            "&family=channel_metrics&family=channel_queue_metrics"
            "&family=channel_exchange_metrics&family=channel_queue_exchange_metrics"
            "&family=connection_churn_metrics&family=node_coarse_metrics"
            "&family=node_metrics&family=vhost_status&family=exchange_names"
            "&family=exchange_bindings",
            "rabbitmq-3.10.8-detailed-all.txt",
        ),
    ],
)
def test_names_types_and_help_match_rabbitmq(metrics_url, traffic, path, fixture):
    ctype, text = fetch(metrics_url + path)
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    ours = families(text)
    theirs = rabbitmq(fixture)
    # exchange_names is not in the captured all-groups fixture; compare it to its own capture.
    theirs.update(rabbitmq("rabbitmq-3.10.8-detailed-exchange_names.txt"))
    assert ours, text
    for name, fam in ours.items():
        if name.startswith("warren_"):
            # Warren's own families (docs/METRICS.md), for what RabbitMQ has no metric for.
            continue
        assert name in theirs, f"{name} is not a RabbitMQ 3.10.8 family ({path})"
        assert fam.type == theirs[name].type, name
        assert fam.documentation == theirs[name].documentation, name
    # The same body as OpenMetrics parses with the strict parser, same families.
    ctype, om = fetch(metrics_url + path, accept="application/openmetrics-text")
    assert ctype.startswith("application/openmetrics-text")
    strict = {f.name: f.type for f in parse_openmetrics(om)}
    assert strict == {n: f.type for n, f in ours.items()}


def test_values_and_labels(metrics_url, traffic):
    fams = families(fetch(metrics_url + "/metrics/per-object")[1])
    ready = {
        s.labels["queue"]: s.value
        for s in fams["rabbitmq_queue_messages_ready"].samples
    }
    assert ready.get(traffic) == 3
    received = fams["rabbitmq_global_messages_received"].samples
    assert received[0].labels == {"protocol": "amqp091"}
    assert received[0].value >= 3
    agg = families(fetch(metrics_url + "/metrics")[1])
    assert agg["rabbitmq_connections"].samples[0].value >= 1
    assert agg["rabbitmq_queue_messages_ready"].samples[0].labels == {}
    coarse = families(
        fetch(metrics_url + "/metrics/detailed?family=queue_coarse_metrics")[1]
    )
    assert "rabbitmq_detailed_queue_messages_ready" in coarse
    assert "rabbitmq_detailed_connections_opened" not in coarse


def test_unknown_path_is_404(metrics_url):
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(metrics_url + "/metrics/nope")
    assert e.value.code == 404
