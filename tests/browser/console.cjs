// Drives the built-in web console (/console) in Debian's Chromium through playwright-core, for
// the Rust tests that check the console end to end. Steered like tests/clients/client.cjs:
// one JSON command per stdin line, exactly one JSON line per command on stdout, in order.
//   node tests/browser/console.cjs          (CHROMIUM overrides /usr/bin/chromium;
//                                             playwright-core comes from tests/clients/node_modules)
// Commands (every answer has "ok"; a failure is {"ok": false, "error": "..."}):
//   {"cmd":"open","url":"http://127.0.0.1:PORT/console","app":"app-id"}
//       -> {"ok":true,"view":"console"|"login"|"error","error_text":"..."}   with view "console",
//          the app is selected and the stream shows "live"; with "login", login selects it
//   {"cmd":"login","token":"..."}            -> {"ok":true,"view":"console"|"login"|"error","error_text":"..."}
//   {"cmd":"text","selector":"#css"}         -> {"ok":true,"text":"..."}
//   {"cmd":"count","name":"connections"}     -> {"ok":true,"value":"3"}   text of #count-<name>
//       (connections, channels, messages-in, messages-out, public, private, encrypted, presence, cache)
//   {"cmd":"count","name":"connections","equals":"3","timeout_ms":5000}
//       -> {"ok":true|false,"value":"..."}     waits until the count shows that value
//   {"cmd":"wait_log","type":"api_message","channel":"x","event":"y","detail_contains":"..","timeout_ms":10000}
//       -> {"ok":true,"found":true,"detail":"...","socket_id":"..."} or {"ok":true,"found":false}
//          (type, channel, event and detail_contains are each optional)
//   {"cmd":"wait_member","channel":"presence-x","user_id":"7","present":true,"timeout_ms":10000}
//       -> {"ok":true|false,"members_text":"..."}   opens the channel's members from the channels table
//   {"cmd":"wait_webhook","state":"failed","http_status":500,"timeout_ms":15000}
//       -> {"ok":true|false,"row_text":"..."}       a row of the webhooks table (http_status optional)
//   {"cmd":"publish","channel":"x","event":"y","data":"..."} -> {"ok":true,"result":"200 {}"}
//   {"cmd":"lookup_user","user_id":"7"}      -> {"ok":true,"sockets":["1.2"],"status":"..."}
//   {"cmd":"screenshot","path":"/abs/file.png","full_page":true} -> {"ok":true}
//   {"cmd":"page_errors"}                    -> {"ok":true,"errors":[...]}  uncaught errors and console.error
//       (not the browser's own "Failed to load resource" lines for 4xx/5xx answers)
//   {"cmd":"close"}                          -> {"ok":true}, then exits
// No command can hang: each has a deadline (timeout_ms + 5 s, or 30 s). The script closes the
// browser and exits when stdin closes.
'use strict';

// NODE_PATH names the node_modules holding tests/clients/package.json's packages.
const { chromium } = require('playwright-core');

const DEFAULT_TIMEOUT_MS = 10000;
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

let browser = null;
let page = null;
let wantedApp = null; // the app `open` asked for, selected after `login` when the page asked for a token
const pageErrors = [];

async function ensurePage() {
  if (page) return page;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
  });
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('console', (msg) => {
    // The browser logs every 4xx/5xx answer ("Failed to load resource"): expected, e.g. 401 before login.
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) pageErrors.push(msg.text());
  });
  return page;
}

/** Waits until the page shows the console, the login form or an error; answers which. */
async function currentView(timeout) {
  const view = await page.waitForFunction(
    () => {
      const visible = (id) => {
        const node = document.getElementById(id);
        return node && !node.hidden;
      };
      if (visible('console-error')) return 'error';
      if (visible('console')) return 'console';
      if (visible('login-section')) return 'login';
      return false;
    },
    null,
    { timeout },
  );
  const name = await view.jsonValue();
  const answer = { ok: true, view: name };
  if (name === 'error') answer.error_text = await page.textContent('#console-error');
  if (name === 'login') answer.error_text = await page.textContent('#login-error');
  return answer;
}

/** Selects the app (when given) and waits until its stream is live. */
async function selectApp(app, timeout) {
  if (app) {
    await page.waitForSelector(`#app-select option[value=${JSON.stringify(app)}]`, { state: 'attached', timeout });
    if ((await page.inputValue('#app-select')) !== app) await page.selectOption('#app-select', app);
  }
  await page.waitForSelector('#stream-state[data-state="live"]', { timeout });
}

async function open(cmd, timeout) {
  await ensurePage();
  wantedApp = cmd.app || null;
  await page.goto(cmd.url, { timeout });
  const answer = await currentView(timeout);
  if (answer.view === 'console') await selectApp(wantedApp, timeout);
  return answer;
}

async function login(cmd, timeout) {
  await page.fill('#login-token', cmd.token, { timeout });
  await page.evaluate(() => (document.getElementById('login-error').textContent = ''));
  await page.click('#login-submit', { timeout });
  // After a wrong token the form stays and shows the server's message.
  await page.waitForFunction(
    () => !document.getElementById('console').hidden || !document.getElementById('console-error').hidden ||
      document.getElementById('login-error').textContent !== '',
    null,
    { timeout },
  );
  const answer = await currentView(timeout);
  if (answer.view === 'console') await selectApp(wantedApp, timeout);
  return answer;
}

async function waitLog(cmd, timeout) {
  const want = { type: cmd.type, channel: cmd.channel, event: cmd.event, detail: cmd.detail_contains };
  try {
    const handle = await page.waitForFunction(
      (w) => {
        for (const row of document.getElementById('log').rows) {
          if (w.type !== undefined && row.dataset.type !== w.type) continue;
          if (w.channel !== undefined && row.dataset.channel !== w.channel) continue;
          if (w.event !== undefined && row.dataset.event !== w.event) continue;
          const detail = row.cells[5].textContent;
          if (w.detail !== undefined && !detail.includes(w.detail)) continue;
          return { detail, socket_id: row.cells[4].textContent };
        }
        return false;
      },
      want,
      { timeout, polling: 100 },
    );
    return Object.assign({ ok: true, found: true }, await handle.jsonValue());
  } catch (err) {
    if (err.name === 'TimeoutError') return { ok: true, found: false };
    throw err;
  }
}

async function membersText() {
  return page.evaluate(() => {
    const panel = document.getElementById('members-panel');
    return panel.hidden ? '' : panel.innerText;
  });
}

async function waitMember(cmd, timeout) {
  const channel = String(cmd.channel);
  const present = cmd.present !== false;
  const started = Date.now();
  const shown = await page.evaluate(
    (c) => !document.getElementById('members-panel').hidden && document.getElementById('members-heading').textContent === 'Members of ' + c,
    channel,
  );
  if (!shown) {
    // A channel nobody is in is not listed: for present=false that already is the answer.
    const row = `#channels-table tbody tr[data-channel=${JSON.stringify(channel)}]`;
    try {
      await page.waitForSelector(row, { timeout: present ? timeout : Math.min(timeout, 3000) });
    } catch (err) {
      if (err.name !== 'TimeoutError') throw err;
      return { ok: !present, members_text: '', channel_listed: false };
    }
    await page.click(row, { timeout });
  }
  const left = Math.max(1, timeout - (Date.now() - started));
  try {
    await page.waitForFunction(
      ([user, want]) => {
        const items = [...document.querySelectorAll('#members li')];
        const loaded = document.getElementById('members-status').textContent !== 'loading…';
        return loaded && items.some((li) => li.dataset.userId === user) === want;
      },
      [String(cmd.user_id), present],
      { timeout: left, polling: 100 },
    );
    return { ok: true, members_text: await membersText() };
  } catch (err) {
    if (err.name !== 'TimeoutError') throw err;
    return { ok: false, members_text: await membersText() };
  }
}

async function waitWebhook(cmd, timeout) {
  const want = { state: cmd.state, http: cmd.http_status === undefined ? undefined : String(cmd.http_status) };
  try {
    const handle = await page.waitForFunction(
      (w) => {
        for (const row of document.querySelectorAll('#webhooks-table tbody tr')) {
          if (w.state !== undefined && row.dataset.state !== w.state) continue;
          if (w.http !== undefined && row.dataset.httpStatus !== w.http) continue;
          return row.innerText;
        }
        return false;
      },
      want,
      { timeout, polling: 200 },
    );
    return { ok: true, row_text: await handle.jsonValue() };
  } catch (err) {
    if (err.name !== 'TimeoutError') throw err;
    const rows = await page.evaluate(() => [...document.querySelectorAll('#webhooks-table tbody tr')].map((r) => r.innerText));
    return { ok: false, row_text: rows.join('\n') };
  }
}

async function publish(cmd, timeout) {
  await page.fill('#publish-channel', String(cmd.channel));
  await page.fill('#publish-event', String(cmd.event));
  if (cmd.data !== undefined) {
    await page.fill('#publish-data', typeof cmd.data === 'string' ? cmd.data : JSON.stringify(cmd.data));
  }
  // The browser would not submit a form with an empty required field: say so instead of timing out.
  const invalid = await page.evaluate(() => {
    const field = [...document.querySelectorAll('#publish-form input, #publish-form textarea')].find((f) => !f.checkValidity());
    return field ? `${field.id}: ${field.validationMessage}` : null;
  });
  if (invalid) return { ok: false, error: `the form refuses it (${invalid})` };
  await page.evaluate(() => (document.getElementById('publish-result').textContent = ''));
  await page.click('#publish-submit');
  const handle = await page.waitForFunction(
    () => {
      const text = document.getElementById('publish-result').textContent;
      return text !== '' && text !== 'sending…' && text;
    },
    null,
    { timeout },
  );
  return { ok: true, result: await handle.jsonValue() };
}

async function lookupUser(cmd, timeout) {
  await page.fill('#user-input', String(cmd.user_id));
  await page.evaluate(() => (document.getElementById('user-status').textContent = ''));
  await page.click('#user-lookup');
  await page.waitForFunction(
    () => {
      const text = document.getElementById('user-status').textContent;
      return text !== '' && text !== 'looking up…';
    },
    null,
    { timeout },
  );
  return {
    ok: true,
    sockets: await page.$$eval('#user-connections li', (items) => items.map((li) => li.textContent)),
    status: await page.textContent('#user-status'),
  };
}

/** The text of #count-<name>; with "equals", first waits (up to timeout_ms) for that value. */
async function count(cmd, timeout) {
  const selector = `#count-${cmd.name}`;
  if (cmd.equals === undefined) return { ok: true, value: await page.textContent(selector, { timeout }) };
  try {
    await page.waitForFunction(
      ([sel, want]) => {
        const node = document.querySelector(sel);
        return node && node.textContent === want;
      },
      [selector, String(cmd.equals)],
      { timeout, polling: 100 },
    );
    return { ok: true, value: String(cmd.equals) };
  } catch (err) {
    if (err.name !== 'TimeoutError') throw err;
    return { ok: false, value: await page.textContent(selector, { timeout: 1000 }) };
  }
}

async function run(cmd) {
  const timeout = Number(cmd.timeout_ms) || DEFAULT_TIMEOUT_MS;
  if (cmd.cmd !== 'open' && cmd.cmd !== 'close' && !page) throw new Error('no page: send "open" first');
  switch (cmd.cmd) {
    case 'open':
      return open(cmd, timeout);
    case 'login':
      return login(cmd, timeout);
    case 'text':
      return { ok: true, text: await page.textContent(cmd.selector, { timeout }) };
    case 'count':
      return count(cmd, timeout);
    case 'wait_log':
      return waitLog(cmd, timeout);
    case 'wait_member':
      return waitMember(cmd, timeout);
    case 'wait_webhook':
      return waitWebhook(cmd, timeout);
    case 'publish':
      return publish(cmd, timeout);
    case 'lookup_user':
      return lookupUser(cmd, timeout);
    case 'screenshot':
      await page.screenshot({ path: cmd.path, fullPage: Boolean(cmd.full_page), timeout });
      return { ok: true };
    case 'page_errors':
      return { ok: true, errors: pageErrors.slice() };
    case 'close':
      await shutdown();
      return { ok: true };
    default:
      throw new Error(`unknown cmd ${JSON.stringify(cmd.cmd)}`);
  }
}

/** Runs one command with a hard deadline, so the steering test never waits forever. */
async function answer(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    return print({ ok: false, error: `bad JSON: ${err.message}` });
  }
  const deadline = (Number(cmd.timeout_ms) || 25000) + 5000;
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${cmd.cmd} took longer than ${deadline} ms`)), deadline);
  });
  try {
    print(Object.assign({ cmd: cmd.cmd }, await Promise.race([run(cmd), expired])));
  } catch (err) {
    print({ cmd: cmd.cmd, ok: false, error: String((err && err.message) || err).split('\n')[0] });
  } finally {
    clearTimeout(timer);
  }
  if (cmd.cmd === 'close') process.exit(0);
}

async function shutdown() {
  const b = browser;
  browser = null;
  page = null;
  if (b) await b.close().catch(() => {});
}

// Commands run one after another, in the order they arrive.
let queue = Promise.resolve();
let buffered = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, nl).trim();
    buffered = buffered.slice(nl + 1);
    if (line) queue = queue.then(() => answer(line));
  }
});
process.stdin.on('end', () => {
  queue = queue.then(shutdown).then(() => process.exit(0));
});
