// ringcast console: one page over the /console/api/* endpoints (see docs of the console API).
// No framework and no build step. Every piece of server data goes into the DOM through
// textContent, never innerHTML, so channel names, event data and user info cannot inject markup.
'use strict';

const API = '/console/api';
const LOG_MAX_ROWS = 1000;
const REFRESH_MS = 2000;

const state = {
  appId: null,
  stream: null,          // the EventSource of the current app
  streamRetry: null,     // timer that reopens a stream the browser gave up on
  refreshTimer: null,
  paused: false,
  pending: [],           // log entries received while paused, oldest first
  pendingCount: 0,       // how many arrived while paused (pending keeps at most LOG_MAX_ROWS)
  membersOf: null,       // presence channel whose members are shown
  lastSeq: 0,            // the newest log entry shown, so a reopened stream resumes after it
  busy: new Set(),       // refreshes in flight, so a slow server does not pile them up
  booting: null,         // the boot() in progress
};

const $ = (id) => document.getElementById(id);

/** Creates an element with text content and optional attributes. */
function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

// ---------------------------------------------------------------------------- HTTP

/** Calls the console API; answers {status, body, text}. Network errors become status 0. */
async function api(path, options) {
  let response;
  try {
    response = await fetch(API + path, Object.assign({ credentials: 'same-origin' }, options));
  } catch (err) {
    return { status: 0, body: null, text: String(err) };
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  return { status: response.status, body, text };
}

function errorText(res) {
  if (res.status === 0) return 'server unreachable: ' + res.text;
  return (res.body && res.body.error) || `HTTP ${res.status}`;
}

/** Data calls that lose the session send the page back to the login form. */
function lostSession(res) {
  if (res.status === 401 || res.status === 403) {
    boot();
    return true;
  }
  return false;
}

function appPath(suffix) {
  return `/apps/${encodeURIComponent(state.appId)}${suffix}`;
}

/** Runs a refresh unless the same one is still in flight. */
async function once(name, fn) {
  if (state.busy.has(name)) return;
  state.busy.add(name);
  try {
    await fn();
  } finally {
    state.busy.delete(name);
  }
}

// ---------------------------------------------------------------------------- session

function showError(message) {
  $('console-error').textContent = message || '';
  show($('console-error'), Boolean(message));
}

/**
 * Asks /session what to show: the console, the login form or the "disabled" message.
 * Concurrent callers (several refreshes that all lost the session) share one run.
 */
function boot() {
  if (!state.booting) state.booting = runBoot().finally(() => (state.booting = null));
  return state.booting;
}

async function runBoot() {
  stopApp();
  const res = await api('/session');
  show($('login-section'), res.status === 401);
  show($('console'), res.status === 200);
  show($('app-picker'), res.status === 200);
  show($('stream-state'), res.status === 200);
  show($('logout'), res.status === 200 && res.body && res.body.auth === 'token');
  if (res.status === 401) {
    showError('');
    $('session-info').textContent = '';
    $('login-token').focus();
    return;
  }
  if (res.status !== 200) {
    showError(errorText(res));
    $('session-info').textContent = '';
    return;
  }
  showError('');
  const s = res.body;
  const parts = [`node ${s.node}`, `v${s.version}`, s.backend];
  if (s.cluster) parts.push('cluster');
  $('session-info').textContent = parts.join(' · ');
  await loadApps();
}

async function login(event) {
  event.preventDefault();
  const res = await api('/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token: $('login-token').value }),
  });
  if (res.status === 200) {
    $('login-token').value = '';
    $('login-error').textContent = '';
    await boot();
  } else {
    $('login-error').textContent = errorText(res);
  }
}

async function logout() {
  await api('/logout', { method: 'POST' });
  await boot();
}

async function loadApps() {
  const res = await api('/apps');
  if (lostSession(res)) return;
  if (res.status !== 200) return showError('could not list apps: ' + errorText(res));
  const select = $('app-select');
  select.replaceChildren();
  for (const app of res.body.apps) {
    const label = app.enabled ? app.id : `${app.id} (disabled)`;
    select.append(el('option', label, { value: app.id }));
  }
  if (!res.body.apps.length) return showError('this server has no apps');
  const wanted = new URLSearchParams(location.hash.slice(1)).get('app');
  const known = res.body.apps.some((a) => a.id === wanted);
  select.value = known ? wanted : res.body.apps[0].id;
  selectApp(select.value);
}

// ---------------------------------------------------------------------------- app switch

function stopApp() {
  if (state.stream) state.stream.close();
  state.stream = null;
  clearTimeout(state.streamRetry);
  clearInterval(state.refreshTimer);
  state.refreshTimer = null;
}

/** Shows one app: a fresh log, a new stream and the panels refreshed every REFRESH_MS. */
function selectApp(appId) {
  stopApp();
  state.appId = appId;
  state.lastSeq = 0;
  history.replaceState(null, '', '#app=' + encodeURIComponent(appId));
  clearLog();
  resetCounts();
  closeMembers();
  $('channels-table').tBodies[0].replaceChildren();
  $('webhooks-table').tBodies[0].replaceChildren();
  $('user-connections').replaceChildren();
  $('user-status').textContent = '';
  $('publish-result').textContent = '';
  openStream();
  refreshAll();
  state.refreshTimer = setInterval(refreshAll, REFRESH_MS);
}

function refreshAll() {
  refreshChannels();
  refreshMembers();
  refreshWebhooks();
}

// ---------------------------------------------------------------------------- stream

function setStreamState(name, text) {
  const node = $('stream-state');
  node.dataset.state = name;
  node.textContent = text;
  $('counts').classList.toggle('stale', name !== 'live');
}

function openStream() {
  const appId = state.appId;
  // A reopened stream resumes after what is shown (EventSource's own reconnects send
  // Last-Event-ID, which the server honours the same way).
  const source = new EventSource(API + appPath('/stream') + `?after=${state.lastSeq}`);
  state.stream = source;
  setStreamState('connecting', 'connecting');
  source.onopen = () => setStreamState('live', 'live');
  source.onerror = () => {
    if (state.stream !== source) return;
    setStreamState('reconnecting', 'reconnecting');
    // EventSource retries by itself unless the answer was not a stream (401, 403, 404...):
    // then it is CLOSED and we check the session before opening a new one.
    if (source.readyState === EventSource.CLOSED) {
      state.streamRetry = setTimeout(() => recheckStream(appId), 3000);
    }
  };
  source.addEventListener('stats', (e) => parsed(e, showStats));
  source.addEventListener('log', (e) => parsed(e, receiveLog));
  source.addEventListener('gap', (e) => parsed(e, (g) => receiveLog({ gap: g.missed, at: Date.now() })));
  // The server restarted (its log numbering began again): what is shown is from before.
  source.addEventListener('reset', () => {
    clearLog();
    state.lastSeq = 0;
  });
}

async function recheckStream(appId) {
  if (state.appId !== appId) return;
  const res = await api('/session');
  if (res.status !== 200) return boot();
  if (state.appId === appId && (!state.stream || state.stream.readyState === EventSource.CLOSED)) {
    openStream();
  }
}

function parsed(event, handler) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch (_) {
    return;
  }
  handler(data);
}

// ---------------------------------------------------------------------------- live counts

const KINDS = ['public', 'private', 'encrypted', 'presence', 'cache'];

function resetCounts() {
  for (const id of ['connections', 'channels', 'messages-in', 'messages-out', ...KINDS]) {
    $('count-' + id).textContent = '–';
  }
  $('counts-status').textContent = '';
}

function showStats(s) {
  const kinds = s.channels || {};
  let total = 0;
  for (const kind of KINDS) {
    const n = kinds[kind] || 0;
    total += n;
    $('count-' + kind).textContent = n;
  }
  $('count-connections').textContent = s.connections;
  $('count-channels').textContent = total;
  $('count-messages-in').textContent = rate(s.messages_in_per_second);
  $('count-messages-out').textContent = rate(s.messages_out_per_second);
  // Set when the server could not count everything (e.g. the cluster's broker is unreachable).
  $('counts-status').textContent = s.error ? 'counts incomplete: ' + s.error : '';
}

function rate(x) {
  const n = Number(x) || 0;
  return n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

// ---------------------------------------------------------------------------- channels & members

async function refreshChannels() {
  await once('channels', async () => {
    const appId = state.appId;
    const prefix = $('channel-filter').value;
    const query = prefix ? '?prefix=' + encodeURIComponent(prefix) : '';
    const res = await api(appPath('/channels') + query);
    if (appId !== state.appId) return; // stale answer
    if (prefix !== $('channel-filter').value) {
      setTimeout(refreshChannels, 0); // the filter changed while this call was in flight
      return;
    }
    if (lostSession(res)) return;
    if (res.status !== 200) {
      $('channels-status').textContent = 'could not list channels: ' + errorText(res);
      return;
    }
    renderChannels(res.body.channels);
    const n = res.body.channels.length;
    $('channels-status').textContent = res.body.truncated
      ? `first ${n} channels shown; narrow the filter to see the rest`
      : n === 0 ? 'no occupied channels' + (prefix ? ' with this prefix' : '') : '';
  });
}

/**
 * Updates the table in place, keyed by channel name, so a focused row keeps its focus
 * across refreshes (moving a focused node would blur it).
 */
function renderChannels(channels) {
  const tbody = $('channels-table').tBodies[0];
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.channel, row]));
  channels.forEach((c, i) => {
    let row = existing.get(c.name);
    existing.delete(c.name);
    if (!row) row = channelRow(c);
    const values = [c.name, c.kind, c.subscription_count, c.user_count ?? ''];
    values.forEach((v, j) => {
      if (row.cells[j].textContent !== String(v)) row.cells[j].textContent = v;
    });
    row.classList.toggle('selected', c.name === state.membersOf);
    if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] || null);
  });
  for (const row of existing.values()) row.remove();
}

/** Presence channels, including presence-cache ones (whose kind may say "cache"). */
function hasMembers(c) {
  return c.kind === 'presence' || c.user_count !== undefined || c.name.startsWith('presence-');
}

function channelRow(c) {
  const row = el('tr', null, { 'data-channel': c.name, 'data-kind': c.kind });
  row.append(el('td', null, { class: 'mono' }), el('td'), el('td', null, { class: 'num' }), el('td', null, { class: 'num' }));
  if (hasMembers(c)) {
    row.tabIndex = 0;
    row.classList.add('clickable');
    row.title = 'Show the members of this channel';
    row.setAttribute('aria-label', `${c.name}: show members`);
    row.addEventListener('click', () => openMembers(c.name));
    row.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        openMembers(c.name);
      }
    });
  }
  return row;
}

function channelRowOf(name) {
  return [...$('channels-table').tBodies[0].rows].find((row) => row.dataset.channel === name);
}

function openMembers(channel) {
  state.membersOf = channel;
  $('members-heading').textContent = 'Members of ' + channel;
  $('members').replaceChildren();
  $('members-status').textContent = 'loading…';
  show($('members-panel'), true);
  for (const row of $('channels-table').tBodies[0].rows) {
    row.classList.toggle('selected', row.dataset.channel === channel);
  }
  refreshMembers();
}

function closeMembers() {
  const row = channelRowOf(state.membersOf);
  if (row && $('members-panel').contains(document.activeElement)) row.focus();
  state.membersOf = null;
  show($('members-panel'), false);
  $('members').replaceChildren();
  for (const row of $('channels-table').tBodies[0].rows) row.classList.remove('selected');
}

async function refreshMembers() {
  if (!state.membersOf) return;
  await once('members', async () => {
    const channel = state.membersOf;
    const res = await api(appPath('/channels/' + encodeURIComponent(channel) + '/members'));
    if (channel !== state.membersOf) return;
    if (lostSession(res)) return;
    if (res.status !== 200) {
      $('members-status').textContent = errorText(res);
      $('members').replaceChildren();
      return;
    }
    const list = res.body.members || [];
    $('members').replaceChildren(...list.map(memberItem));
    $('members-status').textContent = list.length === 1 ? '1 member' : `${list.length} members`;
  });
}

function memberItem(m) {
  const item = el('li', null, { 'data-user-id': m.user_id });
  item.append(el('span', m.user_id, { class: 'user-id mono' }));
  if (m.user_info !== undefined && m.user_info !== null) {
    item.append(el('pre', JSON.stringify(m.user_info, null, 2), { class: 'user-info' }));
  }
  return item;
}

// ---------------------------------------------------------------------------- user lookup

async function lookupUser(event) {
  event.preventDefault();
  const userId = $('user-input').value.trim();
  if (!userId) return;
  $('user-status').textContent = 'looking up…';
  const res = await api(appPath('/users/' + encodeURIComponent(userId) + '/connections'));
  if (lostSession(res)) return;
  const list = $('user-connections');
  list.replaceChildren();
  if (res.status !== 200) {
    $('user-status').textContent = errorText(res);
    return;
  }
  const sockets = res.body.connections || [];
  for (const c of sockets) list.append(el('li', c.socket_id, { 'data-socket-id': c.socket_id }));
  $('user-status').textContent = sockets.length
    ? `${sockets.length} connection${sockets.length === 1 ? '' : 's'} signed in as ${userId}`
    : `no connection is signed in as ${userId}`;
}

// ---------------------------------------------------------------------------- publish

async function publish(event) {
  event.preventDefault();
  const button = $('publish-submit');
  button.disabled = true;
  $('publish-result').textContent = 'sending…';
  try {
    const res = await api(appPath('/events'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        channel: $('publish-channel').value.trim(),
        name: $('publish-event').value.trim(),
        data: $('publish-data').value,
      }),
    });
    // The API's own 401/403 (a disabled app, say) is shown, not taken for a lost session.
    if (res.body && res.body.login && lostSession(res)) return;
    const output = $('publish-result');
    output.textContent = res.status === 0 ? errorText(res) : `${res.status} ${res.text}`;
    output.dataset.ok = String(res.status >= 200 && res.status < 300);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------- event log

/** The badge colour of each log type; failures also get the error style. */
function category(type) {
  if (type === 'gap') return 'error';
  if (type === 'error' || type.endsWith('_error') || type.endsWith('_refused')) return 'error';
  if (type.startsWith('connection_') || type === 'signed_in') return 'connection';
  if (type.startsWith('webhook_')) return 'webhook';
  if (type === 'api_message') return 'api';
  if (type === 'client_event') return 'client';
  return 'subscription'; // subscribed, unsubscribed, member_added, member_removed
}

function receiveLog(entry) {
  if (entry.seq !== undefined) {
    if (entry.seq <= state.lastSeq) return; // already shown
    state.lastSeq = entry.seq;
  }
  if (entry.type && entry.type.startsWith('webhook_')) refreshWebhooks();
  if (!state.paused) return insertLogRows([entry]);
  state.pending.push(entry);
  state.pendingCount += 1;
  if (state.pending.length > LOG_MAX_ROWS) state.pending.shift();
  $('log-new').textContent = `${state.pendingCount} new`;
}

/** Inserts entries (oldest first) on top of the log and trims it to LOG_MAX_ROWS rows. */
function insertLogRows(entries) {
  const tbody = $('log');
  const fragment = document.createDocumentFragment();
  for (let i = entries.length - 1; i >= 0; i--) fragment.append(logRow(entries[i]));
  tbody.prepend(fragment);
  while (tbody.rows.length > LOG_MAX_ROWS) tbody.lastElementChild.remove();
  show($('log-empty'), tbody.rows.length === 0);
}

function logRow(entry) {
  const isGap = entry.gap !== undefined;
  const type = isGap ? 'gap' : entry.type;
  const row = el('tr', null, {
    'data-type': type,
    'data-channel': entry.channel || '',
    'data-event': entry.event || '',
    'data-seq': entry.seq,
    class: 'cat-' + category(type),
  });
  const badge = el('span', isGap ? 'gap' : type, { class: 'badge badge-' + category(type) });
  const typeCell = el('td');
  typeCell.append(badge);
  const detail = isGap ? `${entry.gap} entries missed` : entry.detail;
  row.append(
    el('td', clock(entry.at), { class: 'mono nowrap' }),
    typeCell,
    el('td', entry.channel, { class: 'mono name', title: entry.channel }),
    el('td', entry.event, { class: 'mono name', title: entry.event }),
    el('td', entry.socket_id, { class: 'mono nowrap' }),
    el('td', detail, { class: 'mono detail' }),
  );
  row.hidden = !matchesLogFilter(row);
  return row;
}

/** HH:MM:SS.mmm in local time. */
function clock(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, '0');
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

function matchesLogFilter(row) {
  if (row.dataset.type === 'gap') return true; // a gap matters whatever the filter
  const channel = $('log-filter-channel').value.toLowerCase();
  const event = $('log-filter-event').value.toLowerCase();
  return row.dataset.channel.toLowerCase().includes(channel) && row.dataset.event.toLowerCase().includes(event);
}

function applyLogFilter() {
  for (const row of $('log').rows) row.hidden = !matchesLogFilter(row);
}

function togglePause() {
  state.paused = !state.paused;
  const button = $('log-pause');
  button.textContent = state.paused ? 'Resume' : 'Pause';
  button.setAttribute('aria-pressed', String(state.paused));
  if (!state.paused) {
    insertLogRows(state.pending);
    state.pending = [];
    state.pendingCount = 0;
  }
  $('log-new').textContent = state.paused ? '0 new' : '';
}

function clearLog() {
  $('log').replaceChildren();
  show($('log-empty'), true);
  state.pending = [];
  state.pendingCount = 0;
  $('log-new').textContent = state.paused ? '0 new' : '';
}

// ---------------------------------------------------------------------------- webhooks

async function refreshWebhooks() {
  await once('webhooks', async () => {
    const appId = state.appId;
    const res = await api(appPath('/webhooks'));
    if (appId !== state.appId) return;
    if (lostSession(res)) return;
    if (res.status !== 200) {
      $('webhooks-status').textContent = 'could not list deliveries: ' + errorText(res);
      return;
    }
    const deliveries = res.body.deliveries || [];
    $('webhooks-table').tBodies[0].replaceChildren(...deliveries.map(webhookRow));
    $('webhooks-status').textContent = deliveries.length ? '' : 'no webhook deliveries yet';
  });
}

function webhookRow(d) {
  const row = el('tr', null, { 'data-state': d.state, 'data-id': d.id, 'data-http-status': d.http_status });
  const stateCell = el('td');
  stateCell.append(el('span', d.state, { class: 'badge state-' + d.state }));
  row.append(
    el('td', clock(d.at), { class: 'mono nowrap' }),
    el('td', (d.events || []).join(', ')),
    el('td', d.url, { class: 'mono url' }),
    stateCell,
    el('td', d.http_status === null || d.http_status === undefined ? '—' : d.http_status, { class: 'num' }),
    el('td', d.attempts, { class: 'num' }),
    el('td', d.next_retry_at ? relative(d.next_retry_at) : '—', { class: 'nowrap' }),
    el('td', d.error || '', { class: 'detail' }),
  );
  return row;
}

/** "in 4s", "in 2m 5s" or "due" for a time in the future. */
function relative(ms) {
  const seconds = Math.round((ms - Date.now()) / 1000);
  if (seconds <= 0) return 'due';
  if (seconds < 60) return `in ${seconds}s`;
  return `in ${Math.floor(seconds / 60)}m ${seconds % 60}s`;
}

// ---------------------------------------------------------------------------- wiring

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('app-select').addEventListener('change', (e) => selectApp(e.target.value));
  $('channel-filter').addEventListener('input', debounce(refreshChannels, 200));
  $('members-close').addEventListener('click', closeMembers);
  $('user-form').addEventListener('submit', lookupUser);
  $('publish-form').addEventListener('submit', publish);
  $('log-filter-channel').addEventListener('input', applyLogFilter);
  $('log-filter-event').addEventListener('input', applyLogFilter);
  $('log-pause').addEventListener('click', togglePause);
  $('log-clear').addEventListener('click', clearLog);
  boot();
});
