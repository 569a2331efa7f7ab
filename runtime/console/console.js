// The console's pages: plain JavaScript over the JSON API under ./api/ (documented in
// runtime/src/http/console.rs). Every value from the server is put in the page as text, never
// as HTML. Pages are picked by the URL's #fragment: #devices, #agents, #history/<device>,
// #memory/<device>, #extensions, #mcp-tokens, #firmware, #figures.
'use strict';

let csrf = null;
let refreshTimer = null;

/// Calls the API; `body` is sent as JSON (or as is, when it is a Blob/File). Throws an Error
/// with the server's message when the answer is not 2xx; a 401 shows the sign-in form.
async function api(method, path, body) {
  const headers = {};
  if (csrf && method !== 'GET') headers['X-CSRF-Token'] = csrf;
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers['Content-Type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  const response = await fetch('api/' + path, { method, headers, body: payload, credentials: 'same-origin' });
  let data = {};
  try { data = await response.json(); } catch (_) { /* an empty body */ }
  if (response.status === 401 && path !== 'login') {
    showLogin();
  }
  if (!response.ok) {
    const error = new Error(data.message || response.status + ' ' + response.statusText);
    error.status = response.status;
    error.retryAfter = response.headers.get('Retry-After');
    throw error;
  }
  return data;
}

/// Builds an element: `attrs` are attributes (`on…` keys are listeners), children are nodes or
/// text.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'class') node.className = value;
    else if (key === 'value') node.value = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

let noticeAt = 0;

function notice(text, isError) {
  noticeAt = Date.now();
  const box = document.getElementById('notice');
  box.textContent = text;
  box.className = isError ? 'error' : '';
  box.hidden = !text;
}

/// Runs an action and shows what it did, with the page shown again; or why it failed, with the
/// page left as it is (so nothing typed is lost).
async function act(what, action) {
  try {
    await action();
  } catch (e) {
    notice(e.message, true);
    return;
  }
  notice(what);
  await show();
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : '—';
}

function table(headings, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headings.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headings.length, class: 'muted' }, 'Nothing yet.'))));
}

function showLogin() {
  csrf = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('page').replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('password').focus();
}

async function login(event) {
  event.preventDefault();
  const password = document.getElementById('password');
  try {
    const answer = await api('POST', 'login', { password: password.value });
    csrf = answer.csrf;
    password.value = '';
    document.getElementById('login').hidden = true;
    notice('');
    await show();
  } catch (e) {
    const wait = e.retryAfter ? ' Try again in ' + e.retryAfter + ' s.' : '';
    notice((e.status === 429 ? 'Too many wrong passwords.' : e.message) + wait, true);
  }
}

async function logout() {
  try { await api('POST', 'logout'); } catch (_) { /* signed out anyway */ }
  showLogin();
}

// ---- pages ----

async function devicesPage() {
  const [{ devices }, { agents }] = await Promise.all([api('GET', 'devices'), api('GET', 'agents')]);
  const code = el('input', { id: 'bind-code', inputmode: 'numeric', pattern: '[0-9]{6}', placeholder: '6-digit code', required: true });
  const bind = el('form', { class: 'inline', id: 'bind-form', onsubmit: (e) => {
    e.preventDefault();
    act('Bound the device showing code ' + code.value + '.', () => api('POST', 'devices/bind', { code: code.value.trim() }));
  } }, el('label', {}, 'Bind a device by the code it speaks', code), el('button', { type: 'submit' }, 'Bind'));
  const rows = devices.map((d) => {
    const id = encodeURIComponent(d.id);
    const choose = el('select', { 'data-device': d.id, 'aria-label': 'Agent of ' + d.id, onchange: (e) => {
      const agent = e.target.value || null;
      act(agent ? d.id + ' now has agent ' + agent + ' (from its next session).' : d.id + ' is back on the configuration.',
        () => api('PUT', 'devices/' + id + '/agent', { agent }));
    } }, el('option', { value: '' }, '(configuration)'),
      agents.map((a) => el('option', { value: a.id, selected: a.id === d.agent }, a.name ? a.name + ' (' + a.id + ')' : a.id)));
    return el('tr', { 'data-device': d.id },
      el('td', {}, d.id),
      el('td', {}, d.online ? el('span', { class: 'online' }, 'online') : el('span', { class: 'offline' }, 'offline'),
        d.online ? el('div', { class: 'muted' }, d.online) : null),
      el('td', {}, when(d.last_seen)),
      el('td', {}, d.board || '—'),
      el('td', {}, d.firmware || '—'),
      el('td', {}, d.bound ? 'yes' : 'no'),
      el('td', {}, choose),
      el('td', {},
        el('a', { href: '#history/' + id }, 'History'), ' · ',
        el('a', { href: '#memory/' + id }, 'Memory'), ' ',
        d.bound ? el('button', { class: 'plain', type: 'button', onclick: () => {
          if (confirm('Unbind ' + d.id + '? It must activate again.')) act('Unbound ' + d.id + '.', () => api('DELETE', 'devices/' + id + '/binding'));
        } }, 'Unbind') : null, ' ',
        el('button', { class: 'danger', type: 'button', onclick: () => {
          if (confirm('Revoke every token issued to ' + d.id + '?')) act('Revoked the tokens of ' + d.id + '.', () => api('POST', 'devices/' + id + '/revoke'));
        } }, 'Revoke tokens')));
  });
  return [el('h2', {}, 'Devices'), bind,
    table(['Device', 'Connection', 'Last seen', 'Board', 'Firmware', 'Bound', 'Agent', ''], rows)];
}

const AGENT_FIELDS = [
  ['name', 'Name'], ['llm', 'LLM entry'], ['tts', 'TTS entry'], ['voice', 'Voice'], ['asr', 'ASR entry'],
  ['vllm', 'VLLM entry'], ['memory', 'Memory'], ['intent', 'Intent'], ['language', 'Reply language'],
];

function agentForm(agent) {
  const fields = {};
  const input = (key, label) => {
    fields[key] = el('input', { name: key, value: agent[key] || '' });
    return el('label', {}, label, fields[key]);
  };
  const id = el('input', { name: 'id', value: agent.id || '', required: true, pattern: '[A-Za-z0-9_-]{1,64}', readonly: !!agent.id });
  const prompt = el('textarea', { name: 'prompt' });
  prompt.value = agent.prompt || '';
  const tools = el('input', { name: 'tools', value: (agent.tools || []).join(', '), placeholder: 'empty: the configuration\'s' });
  return el('form', { class: 'grid', id: 'agent-form', onsubmit: (e) => {
    e.preventDefault();
    const body = {};
    for (const [key] of AGENT_FIELDS) if (fields[key].value.trim()) body[key] = fields[key].value.trim();
    if (prompt.value.trim()) body.prompt = prompt.value;
    const list = tools.value.split(',').map((t) => t.trim()).filter(Boolean);
    if (list.length) body.tools = list;
    act('Saved agent ' + id.value + '.', async () => {
      await api('PUT', 'agents/' + encodeURIComponent(id.value.trim()), body);
      location.hash = '#agents';
    });
  } },
  el('label', {}, 'Id', id), AGENT_FIELDS.map(([key, label]) => input(key, label)),
  el('label', { class: 'wide' }, 'Tools (comma separated)', tools),
  el('label', { class: 'wide' }, 'System prompt (empty: the configuration\'s)', prompt),
  el('div', { class: 'wide bar' }, el('button', { type: 'submit' }, agent.id ? 'Save' : 'Create'),
    agent.id ? el('a', { href: '#agents' }, 'New agent') : null));
}

async function agentsPage(editing) {
  const { agents } = await api('GET', 'agents');
  const current = agents.find((a) => a.id === editing) || {};
  const rows = agents.map((a) => el('tr', { 'data-agent': a.id },
    el('td', {}, a.id), el('td', {}, a.name || '—'), el('td', { class: 'wrap' }, a.prompt ? a.prompt.slice(0, 160) : '—'),
    el('td', {}, [a.llm, a.tts, a.voice].filter(Boolean).join(' · ') || '—'),
    el('td', {}, (a.devices || []).join(', ') || '—'),
    el('td', {}, el('a', { href: '#agents/' + encodeURIComponent(a.id) }, 'Edit'), ' ',
      el('a', { href: 'talk.html#' + encodeURIComponent(a.id) }, 'Talk'), ' ',
      el('button', { class: 'danger', type: 'button', onclick: () => {
        if (confirm('Delete agent ' + a.id + '? Its devices go back to the configuration.')) act('Deleted agent ' + a.id + '.', () => api('DELETE', 'agents/' + encodeURIComponent(a.id)));
      } }, 'Delete'))));
  return [el('h2', {}, 'Agents'),
    el('p', { class: 'muted' }, 'An agent overrides the configuration for the devices given it, from their next session. Entries name the configuration\'s ASR/LLM/TTS/… dictionaries.'),
    table(['Id', 'Name', 'Prompt', 'LLM · TTS · voice', 'Devices', ''], rows),
    el('h3', {}, current.id ? 'Edit ' + current.id : 'New agent'), agentForm(current)];
}

function messageText(message) {
  if (typeof message.content === 'string') return message.content;
  if (Array.isArray(message.content)) return message.content.map((p) => p.text || '').join('');
  if (message.tool_calls) return message.tool_calls.map((c) => '→ ' + c.function.name + '(' + c.function.arguments + ')').join('\n');
  return JSON.stringify(message);
}

async function historyPage(device) {
  const query = new URLSearchParams(location.hash.split('?')[1] || '').get('q') || '';
  const id = encodeURIComponent(device);
  const { history } = await api('GET', 'devices/' + id + '/history' + (query ? '?q=' + encodeURIComponent(query) : ''));
  const search = el('input', { id: 'history-search', type: 'search', value: query, placeholder: 'words' });
  const rows = history.map((h) => el('tr', {},
    el('td', {}, new Date(h.at_ms).toLocaleString()),
    el('td', { class: 'role-' + h.message.role }, h.message.role),
    el('td', { class: 'wrap' }, messageText(h.message))));
  return [el('h2', {}, 'History of ' + device),
    el('form', { class: 'inline', onsubmit: (e) => {
      e.preventDefault();
      location.hash = '#history/' + id + (search.value ? '?q=' + encodeURIComponent(search.value) : '');
    } }, el('label', {}, 'Search', search), el('button', { type: 'submit' }, 'Search'),
    el('button', { class: 'plain', type: 'button', onclick: async () => {
      try {
        const data = await api('GET', 'devices/' + id + '/export');
        const link = el('a', { href: URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' })), download: device.replace(/[^A-Za-z0-9_-]/g, '_') + '.json' });
        link.click();
        URL.revokeObjectURL(link.href);
      } catch (e) { notice(e.message, true); }
    } }, 'Export'),
    el('button', { class: 'danger', type: 'button', id: 'history-clear', onclick: () => {
      if (confirm('Clear the chat history of ' + device + '?')) act('Cleared the history of ' + device + '.', () => api('DELETE', 'devices/' + id + '/history'));
    } }, 'Clear')),
    el('p', { class: 'muted' }, history.length + (query ? ' matching' : '') + ' message(s)'),
    table(['When', 'Who', 'Message'], rows)];
}

async function memoryPage(device) {
  const id = encodeURIComponent(device);
  const { memory } = await api('GET', 'devices/' + id + '/memory');
  const rows = [];
  for (const [extension, entries] of Object.entries(memory)) {
    for (const [key, value] of Object.entries(entries)) {
      const text = el('textarea', { 'data-key': extension + '/' + key });
      text.value = value;
      rows.push(el('tr', {}, el('td', {}, extension), el('td', {}, key), el('td', {}, text),
        el('td', {}, el('button', { type: 'button', onclick: () => act('Saved ' + key + '.',
          () => api('PUT', 'devices/' + id + '/memory/' + encodeURIComponent(extension) + '/' + encodeURIComponent(key), { value: text.value })) }, 'Save'))));
    }
  }
  return [el('h2', {}, 'Memory of ' + device),
    el('div', { class: 'bar' }, el('button', { class: 'danger', type: 'button', id: 'memory-clear', onclick: () => {
      if (confirm('Forget everything stored for ' + device + '?')) act('Cleared the memory of ' + device + '.', () => api('DELETE', 'devices/' + id + '/memory'));
    } }, 'Clear all')),
    table(['Extension', 'Key', 'Value', ''], rows)];
}

async function extensionsPage() {
  const { extensions } = await api('GET', 'extensions');
  const rows = extensions.map((x) => {
    const g = x.grant;
    const grant = g ? [g.memory_mb + ' MiB', g.timeout_ms + ' ms', g.kv ? 'kv' : null, g.llm ? 'llm' : null,
      g.http_hosts.length ? 'http: ' + g.http_hosts.join(', ') : null, g.config.length ? 'config: ' + g.config.join(', ') : null,
      (g.media_dirs || []).length ? 'media: ' + g.media_dirs.join(', ') : null]
      .filter(Boolean).join(' · ') : '—';
    const c = x.calls;
    const calls = c ? c.calls + (c.errors || c.traps || c.timeouts ? ' (' + [c.errors ? c.errors + ' errors' : null,
      c.traps ? c.traps + ' traps' : null, c.timeouts ? c.timeouts + ' timeouts' : null].filter(Boolean).join(', ') + ')' : '') : '0';
    const took = c && c.p50_ms !== null ? c.p50_ms + ' / ' + c.p99_ms : '—';
    return el('tr', { 'data-extension': x.id }, el('td', {}, x.id), el('td', {}, x.serving || el('span', { class: 'offline' }, 'not serving')),
      el('td', { class: 'wrap' }, grant), el('td', {}, calls), el('td', {}, took), el('td', { class: 'wrap' }, x.error || '—'),
      el('td', { class: 'muted' }, x.sha256 ? x.sha256.slice(0, 12) : ''));
  });
  return [el('h2', {}, 'Extensions'),
    el('div', { class: 'bar' }, el('button', { type: 'button', onclick: () => act('Reloaded the extension folders.', () => api('POST', 'extensions/reload')) }, 'Reload')),
    table(['Id', 'Version serving', 'Grant', 'Calls', 'p50 / p99 ms', 'Last error', 'SHA-256'], rows)];
}

async function tokensPage() {
  const { tokens, url } = await api('GET', 'mcp-tokens');
  const device = el('input', { id: 'token-device', placeholder: 'device id, or empty for every device' });
  const shown = el('pre', { id: 'new-token', hidden: true });
  const rows = tokens.map((t) => el('tr', {}, el('td', {}, t.id), el('td', {}, t.device || 'every device'),
    el('td', {}, when(t.issued)),
    el('td', {}, el('button', { class: 'danger', type: 'button', onclick: () => act('Revoked token ' + t.id + '.', () => api('DELETE', 'mcp-tokens/' + encodeURIComponent(t.id))) }, 'Revoke'))));
  return [el('h2', {}, 'MCP endpoint tokens'),
    el('p', { class: 'muted' }, 'A tool server connects to ' + url + '<token>; its tools join those of every device, or of the one device the token is for.'),
    el('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      try {
        const { token } = await api('POST', 'mcp-tokens', { device: device.value.trim() || null });
        await show();
        const box = document.getElementById('new-token');
        box.textContent = 'New token (shown once): ' + token + '\n' + url + token;
        box.hidden = false;
      } catch (err) { notice(err.message, true); }
    } }, el('label', {}, 'Device', device), el('button', { type: 'submit' }, 'Issue a token')),
    shown, table(['Id', 'For', 'Issued', ''], rows)];
}

async function firmwarePage() {
  const { images } = await api('GET', 'firmware');
  const file = el('input', { type: 'file', accept: '.bin', id: 'firmware-file', required: true });
  const rows = images.map((i) => el('tr', {}, el('td', {}, i.name), el('td', {}, i.model), el('td', {}, i.version),
    el('td', {}, (i.bytes / 1024).toFixed(0) + ' KiB'),
    el('td', {}, el('button', { class: 'danger', type: 'button', onclick: () => {
      if (confirm('Delete ' + i.name + '?')) act('Deleted ' + i.name + '.', () => api('DELETE', 'firmware/' + encodeURIComponent(i.name)));
    } }, 'Delete'))));
  return [el('h2', {}, 'Firmware images'),
    el('p', { class: 'muted' }, 'OTA offers a board the newest image named <board type>_<version>.bin, e.g. bread-compact-wifi_2.4.3.bin (16 MiB at most).'),
    el('form', { class: 'inline', onsubmit: (e) => {
      e.preventDefault();
      const chosen = file.files[0];
      if (chosen) act('Uploaded ' + chosen.name + '.', () => api('PUT', 'firmware/' + encodeURIComponent(chosen.name), chosen));
    } }, el('label', {}, 'Image', file), el('button', { type: 'submit' }, 'Upload')),
    table(['Name', 'Board', 'Version', 'Size', ''], rows)];
}

async function figuresPage() {
  const f = await api('GET', 'figures');
  const card = (label, value, id) => el('div', { class: 'card' }, el('b', { id }, value ?? '—'), label);
  const turns = Object.entries(f.turns || {});
  const page = [el('h2', {}, 'Live figures'),
    el('div', { class: 'cards' },
      card('sessions now', f.sessions, 'figure-sessions'),
      card('sessions opened', f.sessions_opened, 'figure-opened'),
      card('turns running', f.turns_active, 'figure-active'),
      card('turns with first audio', f.first_audio.count, 'figure-first-audio-count'),
      card('first audio, mean ms', f.first_audio.mean_ms, 'figure-first-audio-mean'),
      card('first audio p50, ms at most', f.first_audio.p50_ms_at_most),
      card('first audio p90, ms at most', f.first_audio.p90_ms_at_most)),
    el('h3', {}, 'Turns by outcome'),
    table(['Outcome', 'Turns'], turns.map(([k, v]) => el('tr', {}, el('td', {}, k), el('td', {}, v))))];
  refreshTimer = setTimeout(() => { if (location.hash === '#figures') show(); }, 2000);
  return page;
}

/// Shows the page the #fragment names (devices by default).
async function show() {
  clearTimeout(refreshTimer);
  if (!csrf) {
    try {
      csrf = (await api('GET', 'session')).csrf;
    } catch (_) {
      return showLogin();
    }
  }
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  const [name, ...rest] = location.hash.slice(1).split('?')[0].split('/');
  const argument = decodeURIComponent(rest.join('/'));
  const pages = {
    devices: devicesPage, agents: () => agentsPage(argument), history: () => historyPage(argument),
    memory: () => memoryPage(argument), extensions: extensionsPage, 'mcp-tokens': tokensPage,
    firmware: firmwarePage, figures: figuresPage,
  };
  const pageName = pages[name] ? name : 'devices';
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('current', link.dataset.page === pageName || (pageName === 'history' || pageName === 'memory') && link.dataset.page === 'devices');
  }
  const target = document.getElementById('page');
  try {
    target.replaceChildren(...await pages[pageName]());
    target.dataset.page = pageName;
  } catch (e) {
    if (e.status !== 401) {
      target.replaceChildren(el('p', { class: 'muted' }, 'This page cannot be shown: ' + e.message));
      target.dataset.page = pageName;
    }
  }
}

document.getElementById('login').addEventListener('submit', login);
document.getElementById('logout').addEventListener('click', logout);
window.addEventListener('hashchange', () => {
  // A notice from the action that moved to this page stays; older ones go.
  if (Date.now() - noticeAt > 1000) notice('');
  show();
});
show();
