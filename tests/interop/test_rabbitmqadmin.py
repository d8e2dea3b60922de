"""The stock rabbitmqadmin (v1, shipped in RabbitMQ 3.10.8's management plugin) against Warren.

The management API is taken from env WARREN_MANAGEMENT_URL (default http://127.0.0.1:15672).
rabbitmqadmin is taken from the installed rabbitmq-server package, else extracted from
`apt-get download rabbitmq-server` into /var/tmp/warren-rabbitmqadmin; the tests skip (with the
reason) only when neither works.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import uuid

import pika
import pytest

INSTALLED = (
    "/usr/lib/rabbitmq/lib/rabbitmq_server-3.10.8/plugins/"
    "rabbitmq_management-3.10.8/priv/www/cli/rabbitmqadmin"
)
CACHE = "/var/tmp/warren-rabbitmqadmin"


def _find_rabbitmqadmin():
    if os.path.isfile(INSTALLED):
        return INSTALLED, None
    pattern = os.path.join(
        CACHE, "x", "usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/"
        "rabbitmq_management-*/priv/www/cli/rabbitmqadmin")
    found = glob.glob(pattern)
    if found:
        return found[0], None
    try:
        os.makedirs(CACHE, exist_ok=True)
        subprocess.run(["apt-get", "download", "rabbitmq-server"], cwd=CACHE,
                       check=True, capture_output=True, timeout=120)
        debs = glob.glob(os.path.join(CACHE, "rabbitmq-server_*.deb"))
        if not debs:
            return None, "apt-get download rabbitmq-server produced no .deb"
        subprocess.run(["dpkg-deb", "-x", debs[0], os.path.join(CACHE, "x")],
                       check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"rabbitmq-server is not installed and could not be downloaded: {e}"
    found = glob.glob(pattern)
    if found:
        return found[0], None
    return None, "no rabbitmqadmin inside the downloaded rabbitmq-server package"


@pytest.fixture(scope="module")
def admin():
    path, why = _find_rabbitmqadmin()
    if path is None:
        pytest.skip(f"rabbitmqadmin unavailable: {why}")
    url = urllib.parse.urlparse(
        os.environ.get("WARREN_MANAGEMENT_URL", "http://127.0.0.1:15672"))

    def run(*args, ok=True):
        cmd = [sys.executable, path, "-H", url.hostname, "-P", str(url.port),
               "-u", "guest", "-p", "guest", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if ok:
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r

    return run


@pytest.fixture
def name():
    return f"admin.{uuid.uuid4().hex[:10]}"


def rows(admin, *args):
    """Runs a list command with -f raw_json and returns the parsed rows."""
    return json.loads(admin("-f", "raw_json", *args).stdout)


def test_list_overview_objects(admin):
    vhosts = [v["name"] for v in rows(admin, "list", "vhosts")]
    assert "/" in vhosts
    users = {u["name"]: u for u in rows(admin, "list", "users")}
    assert "guest" in users
    exchanges = {e["name"]: e["type"] for e in rows(admin, "list", "exchanges")}
    assert exchanges["amq.direct"] == "direct"
    assert exchanges["amq.topic"] == "topic"
    overview = json.loads(admin("-f", "raw_json", "show", "overview").stdout)
    assert overview[0]["rabbitmq_version"]
    # The default table format prints column headers and rows.
    table = admin("list", "exchanges", "name", "type").stdout
    assert " name " in table.splitlines()[1] and "| amq.fanout " in table


def test_declare_publish_get_delete(admin, name, amqp_url):
    out = admin("declare", "queue", f"name={name}", "durable=false").stdout
    assert "queue declared" in out
    assert admin("declare", "exchange", f"name={name}.x", "type=fanout").stdout.strip() \
        == "exchange declared"
    assert "binding declared" in admin(
        "declare", "binding", f"source={name}.x", f"destination={name}",
        "routing_key=k").stdout
    bindings = rows(admin, "list", "bindings")
    assert any(b["source"] == f"{name}.x" and b["destination"] == name for b in bindings)

    assert "Message published" in admin(
        "publish", f"exchange={name}.x", "routing_key=k", "payload=hello").stdout
    # rabbitmqadmin's default exchange publish, and an unroutable one.
    assert "Message published" in admin(
        "publish", f"routing_key={name}", "payload=second").stdout
    assert "Message published but NOT routed" in admin(
        "publish", "routing_key=nowhere.at.all", "payload=x").stdout

    queues = {q["name"]: q for q in rows(admin, "list", "queues", "name", "messages")}
    assert queues[name]["messages"] == 2

    # Seen by an AMQP client too.
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ok = conn.channel().queue_declare(name, passive=True)
        assert ok.method.message_count == 2
    finally:
        conn.close()

    got = rows(admin, "get", f"queue={name}", "ackmode=ack_requeue_false", "count=1")
    assert got[0]["payload"] == "hello"
    assert got[0]["message_count"] == 1
    got = rows(admin, "get", f"queue={name}", "ackmode=ack_requeue_true")
    assert got[0]["payload"] == "second"
    assert admin("purge", "queue", f"name={name}").stdout.strip() == "queue purged"
    queues = {q["name"]: q for q in rows(admin, "list", "queues", "name", "messages")}
    assert queues[name]["messages"] == 0

    assert admin("delete", "binding", f"source={name}.x", "destination_type=queue",
                 f"destination={name}", "properties_key=k").stdout.strip() == "binding deleted"
    assert admin("delete", "exchange", f"name={name}.x").stdout.strip() == "exchange deleted"
    assert admin("delete", "queue", f"name={name}").stdout.strip() == "queue deleted"
    assert name not in [q["name"] for q in rows(admin, "list", "queues")]


def test_users_vhosts_permissions(admin, name):
    admin("declare", "vhost", f"name={name}")
    admin("declare", "user", f"name={name}", "password=pw", "tags=monitoring")
    admin("declare", "permission", f"vhost={name}", f"user={name}",
          "configure=.*", "write=.*", "read=.*")
    perms = rows(admin, "list", "permissions")
    assert any(p["user"] == name and p["vhost"] == name and p["read"] == ".*" for p in perms)
    users = {u["name"]: u for u in rows(admin, "list", "users")}
    tags = users[name]["tags"]
    assert tags == ["monitoring"] or tags == "monitoring"
    admin("declare", "permission", f"vhost={name}", "user=guest",
          "configure=.*", "write=.*", "read=.*")
    admin("--vhost", name, "declare", "queue", "name=inside")
    assert [q["name"] for q in rows(admin, "--vhost", name, "list", "queues")] == ["inside"]
    admin("delete", "user", f"name={name}")
    admin("delete", "vhost", f"name={name}")
    assert name not in [v["name"] for v in rows(admin, "list", "vhosts")]


def test_errors_are_reported(admin, name):
    r = admin("delete", "queue", f"name={name}.missing", ok=False)
    assert r.returncode != 0
    assert "Not found" in r.stdout + r.stderr
    r = admin("-p", "wrong", "list", "queues", ok=False)
    assert r.returncode != 0
    assert "Access refused" in r.stdout + r.stderr


def test_export_import(admin, name):
    admin("declare", "queue", f"name={name}", "durable=true")
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "defs.json")
        assert "Exported definitions" in admin("export", path).stdout
        with open(path) as f:
            defs = json.load(f)
        assert any(q["name"] == name for q in defs["queues"])
        admin("delete", "queue", f"name={name}")
        assert name not in [q["name"] for q in rows(admin, "list", "queues")]
        assert "Uploaded definitions" in admin("import", path).stdout
        assert name in [q["name"] for q in rows(admin, "list", "queues")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        admin("delete", "queue", f"name={name}", ok=False)
