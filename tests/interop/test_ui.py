"""The web UI on the management port, driven end to end in headless Chromium (Debian's
`chromium` and `chromium-driver`, through selenium; nothing downloads a browser).

The UI is taken from env WARREN_MANAGEMENT_URL (default: a local broker on 15672). Without
chromium these tests FAIL with the install hint, unless env WARREN_SKIP_UI=1 is set. With env
WARREN_UI_SCREENSHOTS=DIR the main pages are saved there as PNG files.
"""

import base64
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest

CHROMIUM = os.environ.get("WARREN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WARREN_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 15  # seconds; the UI refreshes every 5 s

if os.environ.get("WARREN_SKIP_UI") == "1":
    pytest.skip("WARREN_SKIP_UI=1", allow_module_level=True)


@pytest.fixture(scope="module")
def ui_url():
    return os.environ.get("WARREN_MANAGEMENT_URL", "http://127.0.0.1:15672").rstrip("/") + "/"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            f"the UI tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}):"
            " `apt-get install chromium chromium-driver`, or set WARREN_SKIP_UI=1"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def wait_for(drv, cond, what):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, WAIT, poll_frequency=0.2).until(cond, message=what)


def visible(drv, css):
    from selenium.webdriver.common.by import By

    def check(d):
        els = d.find_elements(By.CSS_SELECTOR, css)
        return els[0] if els and els[0].is_displayed() else False

    return wait_for(drv, check, f"{css} visible")


def text_of(drv, css):
    """The element's text, read in one script call (pages re-render every 5 s)."""
    return drv.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css
    )


def click(drv, css):
    """Clicks the element in one script call (it may be re-rendered between find and click)."""
    wait_for(
        drv,
        lambda d: d.execute_script(
            "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", css
        ),
        f"{css} to click",
    )


def shot(drv, name):
    out = os.environ.get("WARREN_UI_SCREENSHOTS")
    if out:
        os.makedirs(out, exist_ok=True)
        drv.save_screenshot(os.path.join(out, f"ui-{name}.png"))


def login(drv, url, user="guest", password="guest"):
    drv.get(url)
    drv.execute_script("sessionStorage.clear()")
    drv.get(url + "#/")
    drv.refresh()
    visible(drv, "#login-user").send_keys(user)
    drv.find_element("css selector", "#login-pass").send_keys(password)
    drv.find_element("css selector", "#login-submit").click()


def goto(drv, url, hash_):
    drv.get(url + hash_)


def submit_form(drv, form_id, fields):
    """Fills the inputs/selects named in `fields` of form `form_id` and submits it."""
    from selenium.webdriver.support.ui import Select

    form = visible(drv, f"#{form_id}")
    for name, value in fields.items():
        el = form.find_element("css selector", f"[name='{name}']")
        if el.tag_name == "select":
            Select(el).select_by_value(value)
        else:
            el.clear()
            el.send_keys(value)
    form.find_element("css selector", "button[type='submit']").click()


def api(ui_url, method, path, body=None):
    """The management API as guest (a path other than the UI's own to check what it did)."""
    req = urllib.request.Request(
        ui_url + "api" + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req) as r:
        text = r.read()
    return json.loads(text) if text else None


def user_params(amqp_url, user, password, vhost="/"):
    u = pika.URLParameters(amqp_url)
    return pika.ConnectionParameters(
        host=u.host,
        port=u.port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        socket_timeout=5,
    )


def add_user_from_ui(drv, ui_url, user, password):
    """On the admin page: a user with all permissions on vhost `/`, through the UI's forms."""
    submit_form(drv, "add-user", {"name": user, "password": password, "tags": ""})
    visible(drv, f"tr[data-name='{user}']")
    submit_form(drv, "set-permission", {"user": user, "vhost": "/"})
    path = "/permissions/%2F/" + urllib.parse.quote(user, safe="")

    def has_permission(_d):
        try:
            return api(ui_url, "GET", path)["write"] == ".*"
        except urllib.error.HTTPError:
            return False

    wait_for(drv, has_permission, "permission set from the UI")


def delete_user(ui_url, user):
    try:
        api(ui_url, "DELETE", "/users/" + urllib.parse.quote(user, safe=""))
    except urllib.error.HTTPError:
        pass


def queue_exists(conn, name):
    ch = conn.channel()
    try:
        ch.queue_declare(name, passive=True)
        ch.close()
        return True
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        return False


def test_static_files_and_api_404(ui_url):
    with urllib.request.urlopen(ui_url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert b'id="login-form"' in r.read()
    with urllib.request.urlopen(ui_url + "app.js") as r:
        assert "javascript" in r.headers["Content-Type"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(ui_url + "api/no-such-thing")
    assert e.value.code == 404
    assert json.loads(e.value.read())["error"] == "Object Not Found"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(ui_url + "no-such-file.html")
    assert e.value.code == 404


def test_wrong_password_shows_login_error(browser, ui_url):
    login(browser, ui_url, "guest", "not-the-password")
    err = visible(browser, "#login-error")
    assert "Login failed" in err.text
    assert not browser.find_element("css selector", "#main").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('warren-auth')") is None


def test_overview_queue_count_follows_pika(browser, ui_url, conn, uniq):
    login(browser, ui_url)
    visible(browser, "#total-queues")
    shot(browser, "overview")
    assert text_of(browser, "#node-name")
    before = int(text_of(browser, "#total-queues"))
    name = uniq("ui-overview")
    ch = conn.channel()
    ch.queue_declare(name)
    wait_for(
        browser,
        lambda d: int(text_of(d, "#total-queues") or -1) >= before + 1,
        "overview queue count to go up after a pika declare",
    )
    after = int(text_of(browser, "#total-queues"))
    ch.queue_delete(name)
    wait_for(
        browser,
        lambda d: int(text_of(d, "#total-queues") or -1) <= after - 1,
        "overview queue count to go down after a pika delete",
    )


def test_queue_declare_publish_get_delete_from_ui(browser, ui_url, connect, uniq):
    conn = connect()
    name = uniq("ui-queue")
    login(browser, ui_url)
    visible(browser, "#total-queues")
    goto(browser, ui_url, "#/queues")
    submit_form(browser, "declare-queue", {"name": name, "vhost": "/"})
    wait_for(browser, lambda d: queue_exists(conn, name), "queue declared from the UI")
    row = f"tr[data-name='{name}']"
    visible(browser, row)
    shot(browser, "queues")

    # Publish from the queue page (default exchange), get it with pika.
    goto(browser, ui_url, f"#/queues/%2F/{name}")
    submit_form(browser, "publish-message", {"payload": "hello from the UI"})
    wait_for(browser, lambda d: text_of(d, "#publish-result") == "Message published.", "publish result")
    ch = conn.channel()
    method, _props, body = ch.basic_get(name, auto_ack=True)
    assert method is not None and body == b"hello from the UI"

    # A message published by pika is shown by the UI's get messages (requeued).
    ch.basic_publish("", name, b"from pika", pika.BasicProperties(delivery_mode=2))
    wait_for(browser, lambda d: text_of(d, "#queue-messages") == "1", "queue depth 1 on the page")
    submit_form(browser, "get-messages", {"count": "5", "ackmode": "ack_requeue_true"})
    wait_for(browser, lambda d: "from pika" in (text_of(d, "#get-results") or ""), "got message")
    shot(browser, "queue")
    assert ch.queue_declare(name, passive=True).method.message_count == 1

    # Purge, then delete from the UI.
    browser.find_element("css selector", "#purge-queue").click()
    wait_for(
        browser,
        lambda d: ch.queue_declare(name, passive=True).method.message_count == 0,
        "purged from the UI",
    )
    browser.find_element("css selector", "#delete-queue").click()
    wait_for(browser, lambda d: not queue_exists(conn, name), "queue deleted from the UI")
    wait_for(browser, lambda d: d.current_url.endswith("#/queues"), "back on the queue list")


def test_exchange_declare_publish_delete_from_ui(browser, ui_url, connect, uniq):
    conn = connect()
    ex = uniq("ui-ex")
    q = uniq("ui-exq")
    login(browser, ui_url)
    visible(browser, "#total-queues")
    goto(browser, ui_url, "#/exchanges")
    submit_form(browser, "declare-exchange", {"name": ex, "type": "topic"})
    visible(browser, f"tr[data-name='{ex}']")
    shot(browser, "exchanges")
    ch = conn.channel()
    ch.exchange_declare(ex, "topic", passive=True, durable=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex, "a.*")

    goto(browser, ui_url, f"#/exchanges/%2F/{ex}")
    submit_form(browser, "publish-message", {"routing_key": "a.b", "payload": "routed one"})
    wait_for(browser, lambda d: text_of(d, "#publish-result") == "Message published.", "routed")
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"routed one"
    submit_form(browser, "publish-message", {"routing_key": "x.y", "payload": "lost"})
    wait_for(
        browser,
        lambda d: text_of(d, "#publish-result") == "Message published, but not routed.",
        "unroutable",
    )
    browser.find_element("css selector", "#delete-exchange").click()
    wait_for(browser, lambda d: d.current_url.endswith("#/exchanges"), "back on the list")

    def gone(_d):
        c = conn.channel()
        try:
            c.exchange_declare(ex, "topic", passive=True)
            c.close()
            return False
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            return True

    wait_for(browser, gone, "exchange deleted from the UI")


def test_admin_user_vhost_permission_policy(browser, ui_url, amqp_url, uniq):
    user = uniq("ui-user")
    vhost = uniq("ui-vhost")
    login(browser, ui_url)
    visible(browser, "#total-queues")
    goto(browser, ui_url, "#/admin")
    submit_form(browser, "add-vhost", {"name": vhost})
    visible(browser, f"tr[data-name='{vhost}']")
    submit_form(browser, "add-user", {"name": user, "password": "s3cret", "tags": "management"})
    visible(browser, f"tr[data-name='{user}']")
    # Permission forms list vhosts when the page is built: reload for the new one.
    browser.refresh()
    submit_form(browser, "set-permission", {"user": user, "vhost": vhost})
    submit_form(
        browser,
        "add-policy",
        {"vhost": vhost, "name": "ui-pol", "pattern": "^ui", "definition": '{"max-length": 3}'},
    )
    visible(browser, "tr[data-name='ui-pol']")
    shot(browser, "admin")

    # The new user logs in over AMQP into the new vhost; the policy caps a queue at 3.
    host = pika.URLParameters(amqp_url)
    params = pika.ConnectionParameters(
        host=host.host,
        port=host.port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, "s3cret"),
    )
    c = pika.BlockingConnection(params)
    ch = c.channel()
    ch.queue_declare("ui-capped")
    for i in range(5):
        ch.basic_publish("", "ui-capped", str(i).encode())
    ch.confirm_delivery()
    ch.basic_publish("", "ui-capped", b"5")
    assert ch.queue_declare("ui-capped", passive=True).method.message_count == 3
    c.close()

    # Tags change without a password keeps the password.
    submit_form(browser, "add-user", {"name": user, "tags": "monitoring"})
    wait_for(
        browser,
        lambda d: "monitoring" in (text_of(d, f"tr[data-name='{user}']") or ""),
        "tags updated",
    )
    pika.BlockingConnection(params).close()

    # Delete the user, then the vhost, from the UI.
    click(browser, f"tr[data-name='{user}'] .delete-user")
    wait_for(browser, lambda d: text_of(d, f"tr[data-name='{user}']") is None, "user gone")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(params)
    click(browser, f"tr[data-name='{vhost}'] .delete-vhost")
    wait_for(browser, lambda d: text_of(d, f"tr[data-name='{vhost}']") is None, "vhost gone")


def test_connections_page_closes_a_connection(browser, ui_url, amqp_url, uniq):
    label = uniq("ui-conn")
    params = pika.URLParameters(amqp_url)
    params.client_properties = {"connection_name": label}
    conn = pika.BlockingConnection(params)
    try:
        login(browser, ui_url)
        visible(browser, "#total-queues")
        goto(browser, ui_url, "#/connections")
        click(browser, f"tr[data-client='{label}'] .close-conn")
        shot(browser, "connections")

        def closed(_d):
            try:
                conn.process_data_events(0.1)
            except pika.exceptions.ConnectionClosedByBroker as e:
                assert e.reply_code == 320, e
                assert "Closed via management UI" in e.reply_text, e
                return True
            return False

        wait_for(browser, closed, "connection closed from the UI")
    finally:
        if conn.is_open:
            conn.close()


def test_definitions_import_export_and_vhost_limits(browser, ui_url, amqp_url, uniq):
    vhost = uniq("ui-defs-vh")
    queue = uniq("ui-defs-q")
    definitions = json.dumps(
        {
            "vhosts": [{"name": vhost}],
            "permissions": [
                {"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
            ],
            "queues": [
                {"name": queue, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": {}}
            ],
        }
    )
    login(browser, ui_url)
    visible(browser, "#total-queues")
    goto(browser, ui_url, "#/admin")
    submit_form(browser, "import-definitions", {"definitions": definitions})
    visible(browser, f"tr[data-name='{vhost}']")

    # The imported vhost, permission and queue are real: pika opens the vhost and finds it.
    host = pika.URLParameters(amqp_url)
    params = pika.ConnectionParameters(
        host=host.host,
        port=host.port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials("guest", "guest"),
    )
    c = pika.BlockingConnection(params)
    assert queue_exists(c, queue)
    c.close()

    # Export shows the queue in RabbitMQ's format.
    click(browser, "#export-definitions")
    wait_for(
        browser,
        lambda d: queue
        in (d.execute_script("return document.querySelector('#definitions-export').value") or ""),
        "exported definitions",
    )
    exported = json.loads(
        browser.execute_script("return document.querySelector('#definitions-export').value")
    )
    assert any(q["name"] == queue and q["vhost"] == vhost for q in exported["queues"])

    # A vhost limit of 0 connections set from the UI refuses the next AMQP login.
    browser.refresh()
    submit_form(browser, "set-limit", {"vhost": vhost, "limit": "max-connections", "value": "0"})
    visible(browser, f"tr[data-name='{vhost}/max-connections']")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)
    shot(browser, "admin-definitions")


def test_admin_topic_permission_set_and_cleared(browser, ui_url, amqp_url, uniq):
    user = uniq("ui-topic-user")
    login(browser, ui_url)
    visible(browser, "#total-queues")
    goto(browser, ui_url, "#/admin")
    try:
        add_user_from_ui(browser, ui_url, user, "s3cret")
        submit_form(
            browser,
            "set-topic-permission",
            {"user": user, "vhost": "/", "exchange": "amq.topic", "write": r"^allowed\.", "read": ".*"},
        )
        row = f"tr[data-name='//{user}/amq.topic']"  # vhost/user/exchange
        visible(browser, row)
        assert [p for p in api(ui_url, "GET", "/topic-permissions") if p["user"] == user] == [
            {"user": user, "vhost": "/", "exchange": "amq.topic", "write": r"^allowed\.", "read": ".*"}
        ]

        # Enforced: the user may publish to amq.topic with a matching routing key only.
        c = pika.BlockingConnection(user_params(amqp_url, user, "s3cret"))
        ch = c.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "allowed.x", b"ok")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("amq.topic", "forbidden.x", b"no")
        assert e.value.reply_code == 403
        assert e.value.reply_text == (
            f"ACCESS_REFUSED - access to topic 'forbidden.x' in exchange 'amq.topic' in vhost '/'"
            f" refused for user '{user}'"
        )

        # Cleared from the UI: gone from the API, and the routing key is allowed again.
        click(browser, f"{row} .delete-topic-permission")
        wait_for(browser, lambda d: text_of(d, row) is None, "topic permission row gone")
        assert [p for p in api(ui_url, "GET", "/topic-permissions") if p["user"] == user] == []
        ch = c.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "forbidden.x", b"now allowed")
        c.close()
    finally:
        delete_user(ui_url, user)


def test_admin_user_limit_set_and_cleared(browser, ui_url, amqp_url, uniq):
    user = uniq("ui-limit-user")
    params = user_params(amqp_url, user, "s3cret")
    login(browser, ui_url)
    visible(browser, "#total-queues")
    goto(browser, ui_url, "#/admin")
    opened = []
    try:
        add_user_from_ui(browser, ui_url, user, "s3cret")
        submit_form(browser, "set-user-limit", {"user": user, "limit": "max-connections", "value": "1"})
        row = f"tr[data-name='{user}/max-connections']"
        visible(browser, row)
        assert [x for x in api(ui_url, "GET", "/user-limits") if x["user"] == user] == [
            {"user": user, "value": {"max-connections": 1}}
        ]

        # Enforced: the user's second connection is refused.
        opened.append(pika.BlockingConnection(params))
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
            opened.append(pika.BlockingConnection(params))
        assert (
            f"NOT_ALLOWED - Connection refused for user '{user}': user connection limit (1) is reached"
            in str(e.value)
        )

        # Cleared from the UI: gone from the API, and a second connection opens.
        click(browser, f"{row} .delete-user-limit")
        wait_for(browser, lambda d: text_of(d, row) is None, "user limit row gone")
        assert [x for x in api(ui_url, "GET", "/user-limits") if x["user"] == user] == []
        opened.append(pika.BlockingConnection(params))
    finally:
        for c in opened:
            if c.is_open:
                c.close()
        delete_user(ui_url, user)


def test_bindings_added_and_removed_from_ui(browser, ui_url, connect, uniq):
    ex = uniq("ui-bind-ex")
    dest_ex = uniq("ui-bind-dest")
    q = uniq("ui-bind-q")
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare(ex, "topic")
    ch.exchange_declare(dest_ex, "fanout")
    ch.queue_declare(q)
    ch.confirm_delivery()

    def routes(key):
        """Publishes to `ex` (mandatory, confirmed); True when it reached `q`."""
        try:
            ch.basic_publish(ex, key, key.encode(), mandatory=True)
        except pika.exceptions.UnroutableError:
            assert ch.queue_declare(q, passive=True).method.message_count == 0
            return False
        method, _p, body = ch.basic_get(q, auto_ack=True)
        assert method is not None and body == key.encode()
        return True

    try:
        login(browser, ui_url)
        visible(browser, "#total-queues")
        assert not routes("ui.a")

        # From the queue's page: bind it to `ex` with a wildcard key, then unbind.
        goto(browser, ui_url, f"#/queues/%2F/{q}")
        submit_form(browser, "add-binding", {"source": ex, "routing_key": "ui.*"})
        row = f"tr[data-name='{ex}'][data-key='ui.*']"
        visible(browser, row)
        assert routes("ui.a")
        assert not routes("other.a")
        click(browser, f"{row} .unbind")
        wait_for(browser, lambda d: text_of(d, row) is None, "binding gone from the queue page")
        assert not routes("ui.a")
        # The default exchange's implicit binding is listed, without an unbind button.
        assert text_of(browser, "tr[data-name='']").startswith("(default exchange)")
        assert text_of(browser, "tr[data-name=''] .unbind") is None

        # From the exchange's page: to the queue, and to another exchange.
        goto(browser, ui_url, f"#/exchanges/%2F/{ex}")
        submit_form(
            browser, "add-binding", {"destination_type": "queue", "destination": q, "routing_key": "ui.#"}
        )
        row = f"tr[data-name='{q}'][data-key='ui.#']"
        visible(browser, row)
        submit_form(
            browser,
            "add-binding",
            {"destination_type": "exchange", "destination": dest_ex, "routing_key": "to-ex.*"},
        )
        ex_row = f"tr[data-name='{dest_ex}'][data-key='to-ex.*']"
        visible(browser, ex_row)
        assert "exchange" in text_of(browser, ex_row)
        sources = api(ui_url, "GET", "/exchanges/%2F/" + urllib.parse.quote(dest_ex) + "/bindings/destination")
        assert [(b["source"], b["routing_key"]) for b in sources] == [(ex, "to-ex.*")]
        assert routes("ui.a.b")
        click(browser, f"{row} .unbind")
        wait_for(browser, lambda d: text_of(d, row) is None, "binding gone from the exchange page")
        assert not routes("ui.a.b")
        click(browser, f"{ex_row} .unbind")
        wait_for(browser, lambda d: text_of(d, ex_row) is None, "exchange binding gone")
        assert api(ui_url, "GET", "/exchanges/%2F/" + urllib.parse.quote(dest_ex) + "/bindings/destination") == []
    finally:
        ch.queue_delete(q)
        ch.exchange_delete(ex)
        ch.exchange_delete(dest_ex)
