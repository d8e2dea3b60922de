// Warren's management UI: a client of the JSON API under /api/, with HTTP basic credentials
// from the login form kept in sessionStorage. Plain DOM; every value is set as text (no HTML
// from the server is ever parsed).
'use strict';

const AUTH_KEY = 'warren-auth';
const REFRESH_MS = 5000;
let refreshTimer = null;
let currentRefresh = null;
const rateHistory = []; // overview chart samples: {publish, deliver}

// ---- DOM helpers ----
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const $ = (sel) => document.querySelector(sel);
const enc = encodeURIComponent;

function fmtRate(obj, key) {
  const d = obj && obj.message_stats && obj.message_stats[key + '_details'];
  return d ? d.rate.toFixed(1) + '/s' : '';
}
function num(v) { return v === undefined || v === null ? '' : String(v); }

function flash(msg, isError) {
  const s = $('#status');
  s.textContent = msg;
  s.className = 'status' + (isError ? ' error' : '');
  s.hidden = false;
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { s.hidden = true; }, 4000);
}

// ---- API ----
class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.reason || body.error)) || ('HTTP ' + status));
    this.status = status;
  }
}

async function api(method, path, body, extraHeaders) {
  const auth = sessionStorage.getItem(AUTH_KEY);
  const headers = Object.assign({ 'Authorization': 'Basic ' + auth }, extraHeaders || {});
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch('api' + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit',
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (r.status === 401) {
    sessionStorage.removeItem(AUTH_KEY);
    showLogin((json && json.reason) || 'Login failed');
    throw new ApiError(401, json);
  }
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

// Runs an action from a button or form, reporting its outcome.
async function act(fn, okText) {
  try {
    await fn();
    if (okText) flash(okText);
    if (currentRefresh) await currentRefresh();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) flash(e.message, true);
  }
}

function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    out[el.name] = el.type === 'checkbox' ? el.checked : el.value;
  }
  return out;
}

function parseJsonField(text, what) {
  if (!text || !text.trim()) return {};
  try { return JSON.parse(text); } catch (_) { throw new Error(what + ' is not valid JSON'); }
}

// ---- login ----
function showLogin(message) {
  stopRefresh();
  $('#login').hidden = false;
  $('#main').hidden = true;
  $('#nav').hidden = true;
  $('#whoami').hidden = true;
  const err = $('#login-error');
  err.textContent = message || '';
  err.hidden = !message;
}

async function login(ev) {
  ev.preventDefault();
  const user = $('#login-user').value;
  const pass = $('#login-pass').value;
  sessionStorage.setItem(AUTH_KEY, btoa(unescape(enc(user + ':' + pass))));
  try {
    await api('GET', '/whoami');
    $('#login-pass').value = '';
    route();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showLogin(e.message);
  }
}

function logout() {
  sessionStorage.removeItem(AUTH_KEY);
  showLogin('');
}

// ---- table helper ----
function table(cols, rows, rowFn) {
  return h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { text: c })))),
    h('tbody', {}, rows.length ? rows.map(rowFn)
      : h('tr', {}, h('td', { colspan: cols.length, text: '... no items ...' }))));
}
function td(v, cls) { return h('td', cls ? { class: cls } : {}, v); }
function link(href, text) { return h('a', { href, text }); }
// A row's Delete button: DELETE `path`, then `okText`.
function delBtn(cls, path, okText, label) {
  return h('button', { class: cls, type: 'button', text: label || 'Delete',
    onclick: () => act(() => api('DELETE', path), okText) });
}

async function vhostSelect(name) {
  const vhosts = await api('GET', '/vhosts?columns=name');
  return h('select', { name: name || 'vhost' }, vhosts.map((v) => h('option', { value: v.name, text: v.name })));
}

// ---- pages ----
// Each page fills `main` and returns a refresh function (called every REFRESH_MS).

async function pageOverview(main) {
  const data = h('div', { id: 'overview-data' });
  const canvas = h('canvas', { id: 'rates-chart', width: 600, height: 140 });
  main.append(h('h1', { text: 'Overview' }), data,
    h('h2', { text: 'Message rates' }), canvas,
    h('div', { class: 'legend' }, h('span', { style: 'color:#f60', text: 'publish' }),
      h('span', { style: 'color:#36c', text: 'deliver / get' })));
  return async () => {
    const o = await api('GET', '/overview');
    const ot = o.object_totals || {};
    const qt = o.queue_totals || {};
    const ms = o.message_stats || {};
    const rate = (k) => (ms[k + '_details'] ? ms[k + '_details'].rate : 0);
    rateHistory.push({ publish: rate('publish'), deliver: rate('deliver_get') });
    if (rateHistory.length > 120) rateHistory.shift();
    data.replaceChildren(
      h('h2', { text: 'Totals' }),
      table(['Connections', 'Channels', 'Exchanges', 'Queues', 'Consumers'], [ot], (t) =>
        h('tr', {}, td(num(t.connections), 'num'), td(num(t.channels), 'num'),
          td(num(t.exchanges), 'num'), h('td', { class: 'num', id: 'total-queues', text: num(t.queues) }),
          td(num(t.consumers), 'num'))),
      h('h2', { text: 'Queued messages' }),
      table(['Ready', 'Unacked', 'Total'], [qt], (q) =>
        h('tr', {}, td(num(q.messages_ready), 'num'), td(num(q.messages_unacknowledged), 'num'),
          h('td', { class: 'num', id: 'total-messages', text: num(q.messages) }))),
      h('h2', { text: 'Rates' }),
      table(['Publish', 'Confirm', 'Deliver / get', 'Ack', 'Redeliver', 'Unroutable (drop)'], [o], (x) =>
        h('tr', {}, td(fmtRate(x, 'publish'), 'num'), td(fmtRate(x, 'confirm'), 'num'),
          td(fmtRate(x, 'deliver_get'), 'num'), td(fmtRate(x, 'ack'), 'num'),
          td(fmtRate(x, 'redeliver'), 'num'), td(fmtRate(x, 'drop_unroutable'), 'num'))),
      h('h2', { text: 'Node' }),
      h('p', {}, 'Node ', h('b', { id: 'node-name', text: o.node || '' }), ', cluster ',
        h('b', { text: o.cluster_name || '' }), ', RabbitMQ compatible version ',
        h('b', { text: o.rabbitmq_version || '' })),
      h('h2', { text: 'Listening ports' }),
      table(['Protocol', 'Bound to', 'Port'], o.listeners || [], (l) =>
        h('tr', {}, td(l.protocol), td(l.ip_address), td(num(l.port), 'num'))));
    drawChart(canvas);
  };
}

function drawChart(canvas) {
  const c = canvas.getContext('2d');
  const w = canvas.width, ht = canvas.height;
  c.clearRect(0, 0, w, ht);
  const max = Math.max(1, ...rateHistory.map((s) => Math.max(s.publish, s.deliver)));
  c.fillStyle = '#888';
  c.fillText(max.toFixed(1) + '/s', 4, 12);
  for (const [key, color] of [['publish', '#f60'], ['deliver', '#36c']]) {
    c.strokeStyle = color;
    c.beginPath();
    rateHistory.forEach((s, i) => {
      const x = (i / 119) * (w - 1);
      const y = ht - 2 - (s[key] / max) * (ht - 20);
      if (i === 0) c.moveTo(x, y); else c.lineTo(x, y);
    });
    c.stroke();
  }
}

async function pageConnections(main) {
  const data = h('div');
  main.append(h('h1', { text: 'Connections' }), data);
  return async () => {
    const conns = await api('GET', '/connections');
    const clientName = (c) => (c.client_properties && c.client_properties.connection_name) || '';
    data.replaceChildren(table(['Name', 'Client name', 'Virtual host', 'User', 'State', 'Channels', 'Protocol', ''], conns, (c) =>
      h('tr', { 'data-name': c.name, 'data-client': clientName(c) }, td(c.name), td(clientName(c)), td(c.vhost), td(c.user), td(c.state),
        td(num(c.channels), 'num'), td(c.protocol),
        h('td', {}, h('button', {
          class: 'close-conn', type: 'button', text: 'Force close',
          onclick: () => act(() => api('DELETE', '/connections/' + enc(c.name), undefined,
            { 'X-Reason': 'Closed via management UI' }), 'Connection closed'),
        })))));
  };
}

async function pageChannels(main) {
  const data = h('div');
  main.append(h('h1', { text: 'Channels' }), data);
  return async () => {
    const chans = await api('GET', '/channels');
    data.replaceChildren(table(['Channel', 'Virtual host', 'User', 'State', 'Consumers', 'Prefetch', 'Unacked', 'Publish', 'Deliver / get'], chans, (c) =>
      h('tr', {}, td(c.name), td(c.vhost), td(c.user), td(c.state), td(num(c.consumer_count), 'num'),
        td(num(c.prefetch_count), 'num'), td(num(c.messages_unacknowledged), 'num'),
        td(fmtRate(c, 'publish'), 'num'), td(fmtRate(c, 'deliver_get'), 'num'))));
  };
}

async function pageExchanges(main) {
  const data = h('div');
  const form = h('form', { id: 'declare-exchange', class: 'box' },
    h('label', {}, 'Virtual host ', await vhostSelect()),
    h('label', {}, 'Name ', h('input', { name: 'name', required: true })),
    h('label', {}, 'Type ', h('select', { name: 'type' },
      ['direct', 'fanout', 'headers', 'topic'].map((t) => h('option', { value: t, text: t })))),
    h('label', {}, h('input', { type: 'checkbox', name: 'durable', checked: true }), ' Durable'),
    h('label', {}, h('input', { type: 'checkbox', name: 'auto_delete' }), ' Auto delete'),
    h('label', {}, 'Arguments (JSON) ', h('textarea', { name: 'arguments', rows: 2 })),
    h('button', { type: 'submit', text: 'Add exchange' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    act(async () => {
      await api('PUT', '/exchanges/' + enc(v.vhost) + '/' + enc(v.name), {
        type: v.type, durable: v.durable, auto_delete: v.auto_delete,
        arguments: parseJsonField(v.arguments, 'Arguments'),
      });
      form.elements.name.value = '';
    }, 'Exchange declared');
  });
  main.append(h('h1', { text: 'Exchanges' }), data, h('h2', { text: 'Add a new exchange' }), form);
  return async () => {
    const xs = await api('GET', '/exchanges');
    data.replaceChildren(table(['Virtual host', 'Name', 'Type', 'Features', 'Message rate in', 'Message rate out'], xs, (x) =>
      h('tr', { 'data-name': x.name }, td(x.vhost),
        h('td', {}, link('#/exchanges/' + enc(x.vhost) + '/' + enc(x.name || 'amq.default'), x.name || '(AMQP default)')),
        td(x.type), td([x.durable ? 'D' : '', x.auto_delete ? 'AD' : '', x.internal ? 'I' : ''].filter(Boolean).join(' ')),
        td(fmtRate(x, 'publish_in'), 'num'), td(fmtRate(x, 'publish_out'), 'num'))));
  };
}

function publishForm(vhost, exchange, fixedKey) {
  const form = h('form', { id: 'publish-message', class: 'box' },
    fixedKey === undefined ? h('label', {}, 'Routing key ', h('input', { name: 'routing_key' })) : null,
    h('label', {}, 'Delivery mode ', h('select', { name: 'delivery_mode' },
      h('option', { value: '1', text: '1 - Non-persistent' }), h('option', { value: '2', text: '2 - Persistent' }))),
    h('label', {}, 'Headers (JSON) ', h('textarea', { name: 'headers', rows: 2 })),
    h('label', {}, 'Payload ', h('textarea', { name: 'payload', rows: 4 })),
    h('button', { type: 'submit', text: 'Publish message' }),
    h('p', { id: 'publish-result' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    const out = form.querySelector('#publish-result');
    act(async () => {
      const r = await api('POST', '/exchanges/' + enc(vhost) + '/' + enc(exchange) + '/publish', {
        properties: { delivery_mode: Number(v.delivery_mode), headers: parseJsonField(v.headers, 'Headers') },
        routing_key: fixedKey === undefined ? v.routing_key : fixedKey,
        payload: v.payload, payload_encoding: 'string',
      });
      out.textContent = r && r.routed ? 'Message published.' : 'Message published, but not routed.';
      out.className = r && r.routed ? 'ok' : 'error';
    });
  });
  return form;
}

// ---- bindings (the queue and exchange pages) ----
// A binding's path under /api/bindings/{vhost}: e/{source}/q|e/{destination}.
function bindingPath(vhost, b) {
  return '/bindings/' + enc(vhost) + '/e/' + enc(b.source) + '/' + (b.destination_type === 'queue' ? 'q' : 'e')
    + '/' + enc(b.destination);
}

function unbindButton(vhost, b) {
  return delBtn('unbind', bindingPath(vhost, b) + '/' + enc(b.properties_key), 'Binding removed', 'Unbind');
}

// The add-binding form: `fixed` holds this page's end of the binding (source, or destination and
// its type), `fields` the inputs naming the other end.
function bindingForm(vhost, fixed, fields) {
  const form = h('form', { id: 'add-binding', class: 'box' }, fields,
    h('label', {}, 'Routing key ', h('input', { name: 'routing_key' })),
    h('label', {}, 'Arguments (JSON) ', h('textarea', { name: 'arguments', rows: 2 })),
    h('button', { type: 'submit', text: 'Bind' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    const b = Object.assign({ source: v.source, destination: v.destination, destination_type: v.destination_type }, fixed);
    act(async () => {
      await api('POST', bindingPath(vhost, b),
        { routing_key: v.routing_key, arguments: parseJsonField(v.arguments, 'Arguments') });
      form.reset();
    }, 'Binding added');
  });
  return form;
}

async function pageExchange(main, vhost, name) {
  const data = h('div');
  const del = h('button', {
    id: 'delete-exchange', type: 'button', text: 'Delete this exchange',
    onclick: () => act(async () => {
      await api('DELETE', '/exchanges/' + enc(vhost) + '/' + enc(name));
      location.hash = '#/exchanges';
    }, 'Exchange deleted'),
  });
  const isDefault = name === 'amq.default';
  // The default exchange's bindings are implicit: nothing to add or remove there.
  const bindForm = isDefault ? null : bindingForm(vhost, { source: name }, [
    h('label', {}, 'To ', h('select', { name: 'destination_type' },
      h('option', { value: 'queue', text: 'queue' }), h('option', { value: 'exchange', text: 'exchange' }))),
    h('label', {}, 'Name ', h('input', { name: 'destination', required: true }))]);
  main.append(h('h1', {}, 'Exchange ', h('b', { text: name }), ' in ', h('b', { text: vhost })), data,
    isDefault ? null : h('h2', { text: 'Add binding from this exchange' }), bindForm,
    h('h2', { text: 'Publish message' }), publishForm(vhost, name),
    isDefault ? null : h('h2', { text: 'Delete' }), isDefault ? null : del);
  return async () => {
    const x = await api('GET', '/exchanges/' + enc(vhost) + '/' + enc(name));
    const bs = isDefault ? [] : await api('GET', '/exchanges/' + enc(vhost) + '/' + enc(name) + '/bindings/source');
    data.replaceChildren(
      h('p', {}, 'Type ', h('b', { text: x.type }), ', durable ', h('b', { text: String(x.durable) }),
        ', publish in ', h('b', { text: fmtRate(x, 'publish_in') || '0.0/s' })),
      h('h2', { text: 'Bindings (this exchange is the source)' }),
      table(['To', 'Type', 'Routing key', 'Arguments', ''], bs, (b) =>
        h('tr', { 'data-name': b.destination, 'data-key': b.routing_key }, td(b.destination), td(b.destination_type),
          td(b.routing_key), td(JSON.stringify(b.arguments || {})), h('td', {}, unbindButton(vhost, b)))));
  };
}

async function pageQueues(main) {
  const data = h('div');
  const form = h('form', { id: 'declare-queue', class: 'box' },
    h('label', {}, 'Virtual host ', await vhostSelect()),
    h('label', {}, 'Type ', h('select', { name: 'type' },
      ['classic', 'quorum', 'stream'].map((t) => h('option', { value: t, text: t })))),
    h('label', {}, 'Name ', h('input', { name: 'name', required: true })),
    h('label', {}, h('input', { type: 'checkbox', name: 'durable', checked: true }), ' Durable'),
    h('label', {}, h('input', { type: 'checkbox', name: 'auto_delete' }), ' Auto delete'),
    h('label', {}, 'Arguments (JSON) ', h('textarea', { name: 'arguments', rows: 2 })),
    h('button', { type: 'submit', text: 'Add queue' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    act(async () => {
      const args = parseJsonField(v.arguments, 'Arguments');
      if (v.type !== 'classic') args['x-queue-type'] = v.type;
      await api('PUT', '/queues/' + enc(v.vhost) + '/' + enc(v.name),
        { durable: v.durable, auto_delete: v.auto_delete, arguments: args });
      form.elements.name.value = '';
    }, 'Queue declared');
  });
  main.append(h('h1', { text: 'Queues' }), data, h('h2', { text: 'Add a new queue' }), form);
  return async () => {
    const qs = await api('GET', '/queues');
    data.replaceChildren(table(['Virtual host', 'Name', 'Type', 'State', 'Ready', 'Unacked', 'Total', 'Consumers', 'Incoming', 'Deliver / get', 'Ack'], qs, (q) =>
      h('tr', { 'data-name': q.name }, td(q.vhost),
        h('td', {}, link('#/queues/' + enc(q.vhost) + '/' + enc(q.name), q.name)),
        td(q.type), td(q.state), td(num(q.messages_ready), 'num'), td(num(q.messages_unacknowledged), 'num'),
        h('td', { class: 'num messages', text: num(q.messages) }), td(num(q.consumers), 'num'),
        td(fmtRate(q, 'publish'), 'num'), td(fmtRate(q, 'deliver_get'), 'num'), td(fmtRate(q, 'ack'), 'num'))));
  };
}

async function pageQueue(main, vhost, name) {
  const base = '/queues/' + enc(vhost) + '/' + enc(name);
  const data = h('div');
  const results = h('div', { id: 'get-results' });
  const getForm = h('form', { id: 'get-messages', class: 'box' },
    h('label', {}, 'Ack mode ', h('select', { name: 'ackmode' },
      h('option', { value: 'ack_requeue_true', text: 'Nack message requeue true' }),
      h('option', { value: 'ack_requeue_false', text: 'Automatic ack' }),
      h('option', { value: 'reject_requeue_true', text: 'Reject requeue true' }),
      h('option', { value: 'reject_requeue_false', text: 'Reject requeue false' }))),
    h('label', {}, 'Encoding ', h('select', { name: 'encoding' },
      h('option', { value: 'auto', text: 'Auto string / base64' }), h('option', { value: 'base64', text: 'base64' }))),
    h('label', {}, 'Messages ', h('input', { name: 'count', value: '1', size: 4 })),
    h('button', { type: 'submit', text: 'Get messages' }), results);
  getForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(getForm);
    act(async () => {
      const msgs = await api('POST', base + '/get',
        { count: Number(v.count) || 1, ackmode: v.ackmode, encoding: v.encoding, truncate: 50000 });
      results.replaceChildren(msgs.length ? table(['#', 'Exchange', 'Routing key', 'Redelivered', 'Remaining', 'Payload'], msgs, (m, i) =>
        h('tr', {}, td(String(i + 1)), td(m.exchange), td(m.routing_key), td(String(m.redelivered)),
          td(num(m.message_count), 'num'), h('td', {}, h('pre', { class: 'payload', text: m.payload })))) 
        : h('p', { text: 'Queue is empty' }));
    });
  });
  const buttons = h('p', {},
    h('button', { id: 'purge-queue', type: 'button', text: 'Purge messages',
      onclick: () => act(() => api('DELETE', base + '/contents'), 'Queue purged') }), ' ',
    h('button', { id: 'delete-queue', type: 'button', text: 'Delete queue',
      onclick: () => act(async () => { await api('DELETE', base); location.hash = '#/queues'; }, 'Queue deleted') }));
  const bindForm = bindingForm(vhost, { destination: name, destination_type: 'queue' },
    h('label', {}, 'From exchange ', h('input', { name: 'source', required: true })));
  main.append(h('h1', {}, 'Queue ', h('b', { text: name }), ' in ', h('b', { text: vhost })), data,
    h('h2', { text: 'Add binding to this queue' }), bindForm,
    h('h2', { text: 'Get messages' }), getForm,
    h('h2', { text: 'Publish message (default exchange, routing key = queue name)' }), publishForm(vhost, 'amq.default', name),
    h('h2', { text: 'Purge and delete' }), buttons);
  return async () => {
    const q = await api('GET', base);
    const bs = await api('GET', base + '/bindings');
    data.replaceChildren(
      table(['Type', 'State', 'Ready', 'Unacked', 'Total', 'Consumers', 'Incoming', 'Deliver / get', 'Arguments'], [q], (x) =>
        h('tr', {}, td(x.type), td(x.state), td(num(x.messages_ready), 'num'), td(num(x.messages_unacknowledged), 'num'),
          h('td', { class: 'num', id: 'queue-messages', text: num(x.messages) }), td(num(x.consumers), 'num'),
          td(fmtRate(x, 'publish'), 'num'), td(fmtRate(x, 'deliver_get'), 'num'),
          td(JSON.stringify(x.arguments || {})))),
      h('h2', { text: 'Bindings' }),
      table(['From', 'Routing key', 'Arguments', ''], bs, (b) =>
        h('tr', { 'data-name': b.source, 'data-key': b.routing_key }, td(b.source || '(default exchange)'),
          td(b.routing_key), td(JSON.stringify(b.arguments || {})),
          // The default exchange's binding is implicit (it cannot be removed).
          h('td', {}, b.source ? unbindButton(vhost, b) : null))));
  };
}

async function pageAdmin(main) {
  const data = h('div');
  const vs = await vhostSelect();
  const userForm = h('form', { id: 'add-user', class: 'box' },
    h('label', {}, 'Username ', h('input', { name: 'name', required: true })),
    h('label', {}, 'Password ', h('input', { name: 'password', type: 'password' })),
    h('label', {}, 'Tags (comma separated) ', h('input', { name: 'tags' })),
    h('button', { type: 'submit', text: 'Add / update user' }));
  userForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(userForm);
    act(async () => {
      const body = { tags: v.tags };
      if (v.password) body.password = v.password;
      else {
        // Keep the existing password when only the tags change.
        const u = await api('GET', '/users/' + enc(v.name)).catch(() => null);
        if (!u) throw new Error('A password is needed for a new user');
        body.password_hash = u.password_hash;
        body.hashing_algorithm = u.hashing_algorithm;
      }
      await api('PUT', '/users/' + enc(v.name), body);
      userForm.reset();
    }, 'User saved');
  });
  const vhostForm = h('form', { id: 'add-vhost', class: 'box' },
    h('label', {}, 'Name ', h('input', { name: 'name', required: true })),
    h('label', {}, 'Description ', h('input', { name: 'description' })),
    h('button', { type: 'submit', text: 'Add virtual host' }));
  vhostForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(vhostForm);
    act(async () => { await api('PUT', '/vhosts/' + enc(v.name), { description: v.description }); vhostForm.reset(); }, 'Virtual host added');
  });
  const permForm = h('form', { id: 'set-permission', class: 'box' },
    h('label', {}, 'User ', h('input', { name: 'user', required: true })),
    h('label', {}, 'Virtual host ', vs),
    h('label', {}, 'Configure regexp ', h('input', { name: 'configure', value: '.*' })),
    h('label', {}, 'Write regexp ', h('input', { name: 'write', value: '.*' })),
    h('label', {}, 'Read regexp ', h('input', { name: 'read', value: '.*' })),
    h('button', { type: 'submit', text: 'Set permission' }));
  permForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(permForm);
    act(() => api('PUT', '/permissions/' + enc(v.vhost) + '/' + enc(v.user),
      { configure: v.configure, write: v.write, read: v.read }), 'Permission set');
  });
  const policyForm = h('form', { id: 'add-policy', class: 'box' },
    h('label', {}, 'Virtual host ', await vhostSelect()),
    h('label', {}, 'Name ', h('input', { name: 'name', required: true })),
    h('label', {}, 'Pattern ', h('input', { name: 'pattern', required: true })),
    h('label', {}, 'Apply to ', h('select', { name: 'apply-to' },
      ['all', 'queues', 'exchanges'].map((t) => h('option', { value: t, text: t })))),
    h('label', {}, 'Priority ', h('input', { name: 'priority', value: '0', size: 4 })),
    h('label', {}, 'Definition (JSON) ', h('textarea', { name: 'definition', rows: 3 })),
    h('button', { type: 'submit', text: 'Add / update policy' }));
  policyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(policyForm);
    act(async () => {
      await api('PUT', '/policies/' + enc(v.vhost) + '/' + enc(v.name), {
        pattern: v.pattern, 'apply-to': v['apply-to'], priority: Number(v.priority) || 0,
        definition: parseJsonField(v.definition, 'Definition'),
      });
    }, 'Policy saved');
  });
  // Topic permissions: per (user, vhost, exchange), as RabbitMQ's user page.
  const topicForm = h('form', { id: 'set-topic-permission', class: 'box' },
    h('label', {}, 'User ', h('input', { name: 'user', required: true })),
    h('label', {}, 'Virtual host ', await vhostSelect()),
    h('label', {}, 'Exchange ', h('input', { name: 'exchange', value: 'amq.topic', required: true })),
    h('label', {}, 'Write regexp ', h('input', { name: 'write', value: '.*' })),
    h('label', {}, 'Read regexp ', h('input', { name: 'read', value: '.*' })),
    h('button', { type: 'submit', text: 'Set topic permission' }));
  topicForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(topicForm);
    act(() => api('PUT', '/topic-permissions/' + enc(v.vhost) + '/' + enc(v.user),
      { exchange: v.exchange, write: v.write, read: v.read }), 'Topic permission set');
  });
  const vhostLimitForm = limitForm('set-limit', 'Virtual host', await vhostSelect(),
    ['max-connections', 'max-queues'], '/vhost-limits/');
  const userLimitForm = limitForm('set-user-limit', 'User', h('input', { name: 'user', required: true }),
    ['max-connections', 'max-channels'], '/user-limits/');
  // Definitions: export shows (and offers to save) GET /api/definitions; import POSTs pasted
  // or loaded JSON, as RabbitMQ's "Import definitions".
  const exported = h('textarea', { id: 'definitions-export', rows: 6, readonly: true });
  const exportBtn = h('button', { id: 'export-definitions', type: 'button', text: 'Export definitions',
    onclick: () => act(async () => {
      const d = await api('GET', '/definitions');
      const text = JSON.stringify(d, null, 2);
      exported.value = text;
      const a = h('a', { href: URL.createObjectURL(new Blob([text], { type: 'application/json' })),
        download: 'warren-definitions.json' });
      a.click();
    }, 'Definitions exported') });
  const importForm = h('form', { id: 'import-definitions', class: 'box' },
    h('label', {}, 'File ', h('input', { name: 'file', type: 'file', accept: '.json,application/json' })),
    h('label', {}, 'or JSON ', h('textarea', { name: 'definitions', rows: 4 })),
    h('button', { type: 'submit', text: 'Import definitions' }));
  importForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    act(async () => {
      const file = importForm.elements.file.files[0];
      const text = file ? await file.text() : importForm.elements.definitions.value;
      await api('POST', '/definitions', parseJsonField(text, 'The definitions'));
      importForm.reset();
    }, 'Definitions imported');
  });
  main.append(h('h1', { text: 'Admin' }), data,
    h('h2', { text: 'Add / update a user' }), userForm,
    h('h2', { text: 'Add a virtual host' }), vhostForm,
    h('h2', { text: 'Set permission' }), permForm,
    h('h2', { text: 'Set topic permission' }), topicForm,
    h('h2', { text: 'Add / update a policy' }), policyForm,
    h('h2', { text: 'Set a virtual host limit' }), vhostLimitForm,
    h('h2', { text: 'Set a user limit' }), userLimitForm,
    h('h2', { text: 'Definitions' }), h('div', { class: 'box' }, exportBtn, exported), importForm);
  return async () => {
    const [users, vhosts, perms, topicPerms, policies, vhostLimits, userLimits] = await Promise.all([
      api('GET', '/users'), api('GET', '/vhosts'), api('GET', '/permissions'), api('GET', '/topic-permissions'),
      api('GET', '/policies'), api('GET', '/vhost-limits'), api('GET', '/user-limits')]);
    data.replaceChildren(
      h('h2', { text: 'Users' }),
      table(['Name', 'Tags', ''], users, (u) => h('tr', { 'data-name': u.name }, td(u.name),
        td(Array.isArray(u.tags) ? u.tags.join(', ') : u.tags),
        h('td', {}, delBtn('delete-user', '/users/' + enc(u.name), 'User deleted')))),
      h('h2', { text: 'Virtual hosts' }),
      table(['Name', 'Description', 'Messages', ''], vhosts, (v) => h('tr', { 'data-name': v.name }, td(v.name),
        td(v.description || ''), td(num(v.messages), 'num'),
        h('td', {}, delBtn('delete-vhost', '/vhosts/' + enc(v.name), 'Virtual host deleted')))),
      h('h2', { text: 'Permissions' }),
      table(['User', 'Virtual host', 'Configure', 'Write', 'Read', ''], perms, (p) => h('tr', {}, td(p.user), td(p.vhost),
        td(p.configure), td(p.write), td(p.read),
        h('td', {}, delBtn('delete-permission', '/permissions/' + enc(p.vhost) + '/' + enc(p.user), 'Permission cleared')))),
      h('h2', { text: 'Topic permissions' }),
      // DELETE clears all of the user's topic permissions in the vhost, as in RabbitMQ.
      table(['User', 'Virtual host', 'Exchange', 'Write', 'Read', ''], topicPerms, (p) =>
        h('tr', { 'data-name': p.vhost + '/' + p.user + '/' + p.exchange }, td(p.user), td(p.vhost),
          td(p.exchange), td(p.write), td(p.read),
          h('td', {}, delBtn('delete-topic-permission', '/topic-permissions/' + enc(p.vhost) + '/' + enc(p.user),
            'Topic permissions cleared')))),
      h('h2', { text: 'Policies' }),
      table(['Virtual host', 'Name', 'Pattern', 'Apply to', 'Definition', 'Priority', ''], policies, (p) =>
        h('tr', { 'data-name': p.name }, td(p.vhost), td(p.name), td(p.pattern), td(p['apply-to']),
          td(JSON.stringify(p.definition)), td(num(p.priority), 'num'),
          h('td', {}, delBtn('delete-policy', '/policies/' + enc(p.vhost) + '/' + enc(p.name), 'Policy deleted')))),
      h('h2', { text: 'Virtual host limits' }),
      limitTable('Virtual host', vhostLimits, 'vhost', 'delete-limit', '/vhost-limits/'),
      h('h2', { text: 'User limits' }),
      limitTable('User', userLimits, 'user', 'delete-user-limit', '/user-limits/'));
  };
}

// A "set a limit" form of vhost or user limits: `owner` is the field naming the vhost or user,
// `base` the API path the limit is PUT under (base + owner + '/' + limit name).
function limitForm(id, ownerLabel, owner, names, base) {
  const form = h('form', { id, class: 'box' },
    h('label', {}, ownerLabel + ' ', owner),
    h('label', {}, 'Limit ', h('select', { name: 'limit' }, names.map((t) => h('option', { value: t, text: t })))),
    h('label', {}, 'Value ', h('input', { name: 'value', required: true, size: 6 })),
    h('button', { type: 'submit', text: 'Set limit' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    act(async () => {
      const value = Number(v.value);
      if (!Number.isInteger(value)) throw new Error('The limit must be a whole number');
      await api('PUT', base + enc(v[owner.name]) + '/' + enc(v.limit), { value });
    }, 'Limit set');
  });
  return form;
}

// The table of /api/vhost-limits or /api/user-limits (`[{<key>: owner, value: {name: n}}]`),
// one row per limit.
function limitTable(ownerLabel, limits, key, cls, base) {
  const rows = [];
  for (const l of limits) {
    for (const [name, value] of Object.entries(l.value || {})) rows.push({ owner: l[key], name, value });
  }
  return table([ownerLabel, 'Limit', 'Value', ''], rows, (l) =>
    h('tr', { 'data-name': l.owner + '/' + l.name }, td(l.owner), td(l.name), td(num(l.value), 'num'),
      h('td', {}, delBtn(cls, base + enc(l.owner) + '/' + enc(l.name), 'Limit cleared'))));
}

// ---- router ----
function stopRefresh() {
  clearInterval(refreshTimer);
  refreshTimer = null;
  currentRefresh = null;
}

async function route() {
  if (!sessionStorage.getItem(AUTH_KEY)) { showLogin(''); return; }
  stopRefresh();
  const parts = (location.hash.replace(/^#\/?/, '') || '').split('/').map(decodeURIComponent);
  const page = parts[0] || 'overview';
  const pages = {
    overview: () => pageOverview(main),
    connections: () => pageConnections(main),
    channels: () => pageChannels(main),
    exchanges: () => (parts.length >= 3 ? pageExchange(main, parts[1], parts[2]) : pageExchanges(main)),
    queues: () => (parts.length >= 3 ? pageQueue(main, parts[1], parts[2]) : pageQueues(main)),
    admin: () => pageAdmin(main),
  };
  const main = $('#main');
  main.replaceChildren();
  $('#login').hidden = true;
  main.hidden = false;
  $('#nav').hidden = false;
  $('#whoami').hidden = false;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  try {
    const who = await api('GET', '/whoami');
    $('#user-name').textContent = who.name;
    const refresh = await (pages[page] || pages.overview)();
    const safe = async () => {
      try { await refresh(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) flash(e.message, true); }
    };
    currentRefresh = safe;
    await safe();
    refreshTimer = setInterval(safe, REFRESH_MS);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) flash(e.message, true);
  }
}

$('#login-form').addEventListener('submit', login);
$('#logout').addEventListener('click', logout);
window.addEventListener('hashchange', route);
route();
