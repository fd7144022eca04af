// The voxgate console: one server-sent event stream, rendered into the page as it comes.
// Hand-written, no library: elements are made with createElement and text set with
// textContent (nothing from the stream is ever parsed as HTML), plots are SVG polylines.
'use strict';

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const nodesBox = document.getElementById('nodes');
const statusBox = document.getElementById('status');
const messageBox = document.getElementById('message');
const SVG = 'http://www.w3.org/2000/svg';
const cards = new Map(); // "guild/channel" -> {card, rows: Map(user -> row), ...}
const nodeCards = new Map();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function say(text, bad = false) {
  messageBox.textContent = text;
  messageBox.classList.toggle('bad', bad);
}

async function act(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'X-CSRF-Token': csrf, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = {};
  try { answer = await response.json(); } catch (error) { answer = {}; }
  if (!response.ok) say(`${path}: ${answer.error || response.status}`, true);
  return { ok: response.ok, answer };
}

// --- plots ---------------------------------------------------------------------------

function plot(className, label) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', `plot ${className}`);
  svg.setAttribute('viewBox', '0 0 600 80');
  svg.setAttribute('preserveAspectRatio', 'none');
  for (const y of [20, 40, 60]) {
    const grid = document.createElementNS(SVG, 'line');
    grid.setAttribute('x1', '0'); grid.setAttribute('x2', '600');
    grid.setAttribute('y1', String(y)); grid.setAttribute('y2', String(y));
    grid.setAttribute('class', 'gridline');
    svg.append(grid);
  }
  const area = document.createElementNS(SVG, 'polygon');
  area.setAttribute('class', 'area');
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('class', 'line');
  svg.append(area, line);
  const scale = el('span', { class: 'scale' });
  const now = el('span', { class: 'now' });
  const axis = el('div', { class: 'axis' }, el('span', { text: '−5 min' }), el('span', { text: 'now' }));
  const box = el('figure', { class: 'plotbox' },
    el('figcaption', {}, el('span', { class: 'label', text: label }), now, scale), svg, axis);
  return { box, svg, line, area, scale, now };
}

let historyLength = 600;

// Right-aligned on a fixed time axis: the newest sample at the right edge, five minutes wide.
function drawPlot(view, values, unit, floor = 1) {
  const top = Math.max(floor, ...values) * 1.15;
  const step = 600 / Math.max(1, historyLength - 1);
  const offset = historyLength - values.length;
  const points = values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(80 - (v / top) * 76).toFixed(1)}`);
  view.line.setAttribute('points', points.join(' '));
  view.area.setAttribute('points', `${(offset * step).toFixed(1)},80 ${points.join(' ')} 600,80`);
  const last = values.length ? values[values.length - 1] : 0;
  view.svg.dataset.last = String(last);
  view.svg.dataset.max = String(Math.max(0, ...values));
  const withUnit = (v) => (unit ? `${v.toFixed(0)} ${unit}` : v.toFixed(0));
  view.now.textContent = withUnit(last);
  view.scale.textContent = `peak ${withUnit(Math.max(0, ...values))} in the last 5 min`;
}

// --- members -------------------------------------------------------------------------

function drops(counts) {
  const named = Object.entries(counts || {}).filter(([, n]) => n > 0);
  return named.length ? named.map(([reason, n]) => `${reason.replace(/_/g, ' ')} ${n}`).join(', ') : '—';
}

function memberRow(channel, member) {
  const base = `/v1/channels/${encodeURIComponent(channel.guild_id)}/${encodeURIComponent(channel.channel_id)}/members/${encodeURIComponent(member.user_id)}`;
  const light = el('span', { class: 'light', title: 'speaking' });
  const mute = el('button', { type: 'button', class: 'mute', text: 'Mute' });
  const kick = el('button', { type: 'button', class: 'disconnect danger', text: 'Disconnect' });
  const row = el('tr', { class: 'member' });
  row.dataset.user = member.user_id;
  const cells = {};
  for (const name of ['user', 'mode', 'dave', 'in', 'out', 'dropped']) cells[name] = el('td', { class: name });
  row.append(el('td', { class: 'speaking' }, light), cells.user, cells.mode, cells.dave,
    cells.in, cells.out, cells.dropped, el('td', { class: 'actions' }, mute, kick));
  mute.addEventListener('click', async () => {
    const muted = row.dataset.muted === 'true';
    const { ok } = await act(`${base}/mute`, { mute: !muted });
    if (ok) say(`${muted ? 'unmuted' : 'server-muted'} ${member.user_id}`);
  });
  kick.addEventListener('click', async () => {
    const { ok } = await act(`${base}/disconnect`);
    if (ok) say(`disconnected ${member.user_id} (4014)`);
  });
  return { row, light, cells, mute, kick };
}

function updateMember(view, member) {
  const { row, light, cells, mute } = view;
  row.dataset.speaking = String(member.speaking);
  row.dataset.muted = String(member.muted);
  light.classList.toggle('on', member.speaking);
  row.classList.toggle('is-muted', member.muted);
  row.classList.toggle('is-recorder', member.recorder);
  cells.user.textContent = member.user_id;
  if (member.recorder) cells.user.append(el('span', { class: 'tag', text: 'recorder' }));
  if (member.muted) cells.user.append(el('span', { class: 'tag bad', text: 'server-muted' }));
  if (!member.connected) cells.user.append(el('span', { class: 'tag', text: 'resuming' }));
  cells.mode.textContent = member.mode ? member.mode.replace(/_rtpsize$/, '') : '—';
  cells.dave.textContent = member.dave_protocol_version
    ? `v${member.dave_protocol_version} ${member.dave_state || ''}` : 'off';
  cells.in.textContent = member.packets_in_per_s.toFixed(0);
  cells.out.textContent = member.packets_out_per_s.toFixed(0);
  cells.dropped.textContent = drops(member.dropped);
  mute.textContent = member.muted ? 'Unmute' : 'Mute';
}

// --- channels ------------------------------------------------------------------------

function channelCard(channel) {
  const key = `${channel.guild_id}/${channel.channel_id}`;
  const base = `/v1/channels/${encodeURIComponent(channel.guild_id)}/${encodeURIComponent(channel.channel_id)}`;
  const title = el('h3', { text: `guild ${channel.guild_id} · channel ${channel.channel_id}` });
  const dave = el('span', { class: 'badge' });
  const seconds = el('input', { type: 'number', min: '1', max: '3600', value: '30', class: 'seconds', title: 'seconds to record' });
  const record = el('button', { type: 'button', class: 'record', text: 'Record' });
  const end = el('button', { type: 'button', class: 'end danger', text: 'End call' });
  const rates = plot('rate-plot', 'packets in / s');
  const body = el('tbody');
  const table = el('table', { class: 'grid members' },
    el('thead', {}, el('tr', {}, ...['', 'user', 'mode', 'E2EE (DAVE)', 'in /s', 'out /s', 'dropped', ''].map((t) => el('th', { text: t })))),
    body);
  const card = el('article', { class: 'channel panel' },
    el('div', { class: 'channel-head' }, title, dave,
      el('span', { class: 'spacer' }), seconds, el('span', { class: 'unit', text: 's' }), record, end),
    rates.box, table);
  card.dataset.channel = key;
  if (channel.remote) {
    // A call of another node or worker: its history and recorder are on that node.
    rates.box.hidden = true;
    for (const control of [seconds, record, card.querySelector('.unit')]) control.hidden = true;
  }
  record.addEventListener('click', async () => {
    const { ok, answer } = await act('/v1/recordings', {
      guild_id: channel.guild_id, channel_id: channel.channel_id, seconds: Number(seconds.value) || 30,
    });
    if (ok) say(`recording ${answer.id} started in ${key}`);
  });
  end.addEventListener('click', async () => {
    const { ok, answer } = await act(`${base}/end`);
    if (ok) say(`ended the call in ${key}: ${answer.members} members closed (4022)`);
  });
  return { card, body, dave, rates, rows: new Map() };
}

function updateChannel(view, channel) {
  const group = channel.dave;
  view.dave.textContent = group ? `DAVE ${group.state} · epoch ${group.epoch}` : 'no DAVE';
  view.dave.classList.toggle('good', !!group && group.state === 'established');
  drawPlot(view.rates, channel.history, 'pkt/s', 10);
  const seen = new Set();
  for (const member of channel.members) {
    seen.add(member.user_id);
    let row = view.rows.get(member.user_id);
    if (!row) {
      row = memberRow(channel, member);
      view.rows.set(member.user_id, row);
      view.body.append(row.row);
    }
    updateMember(row, member);
  }
  for (const [user, row] of view.rows) {
    if (!seen.has(user)) { row.row.remove(); view.rows.delete(user); }
  }
}

// --- nodes ---------------------------------------------------------------------------

function nodeCard(node) {
  const cpu = plot('cpu-plot', 'CPU');
  const sessions = plot('sessions-plot', 'sessions');
  const summary = el('p', { class: 'summary' });
  const channels = el('div', { class: 'channels' });
  const empty = el('p', { class: 'muted-text', text: 'No calls on this node.' });
  const card = el('section', { class: 'node' },
    el('div', { class: 'panel node-head' }, el('h2', { text: `node ${node.name}` }), summary,
      el('div', { class: 'plots' }, cpu.box, sessions.box)),
    empty, channels);
  card.dataset.node = node.name;
  if (node.remote) {
    // Another node of the cluster, or a worker: its calls and members as its admin API
    // said a moment ago (no plots of its own here).
    card.classList.add('remote');
    cpu.box.hidden = true;
    sessions.box.hidden = true;
  }
  return { card, cpu, sessions, summary, channels, empty };
}

function render(snapshot) {
  historyLength = snapshot.history_length || historyLength;
  const seenNodes = new Set();
  for (const node of snapshot.nodes) {
    seenNodes.add(node.name);
    let view = nodeCards.get(node.name);
    if (!view) {
      view = nodeCard(node);
      nodeCards.set(node.name, view);
      nodesBox.append(view.card);
    }
    const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
    if (node.remote) {
      view.summary.textContent = `${node.state || 'serving'} · ${plural(node.sessions, 'session')} · ` +
        `CPU ${node.cpu_percent.toFixed(0)} %` + (node.unreachable ? ` · unreachable: ${node.unreachable}` : '');
      view.card.classList.toggle('unreachable', !!node.unreachable);
    } else {
      view.summary.textContent = `${plural(node.sessions, 'session')} · ${plural(node.channels.length, 'call')} · ` +
        `${node.packets_in} packets in, ${node.packets_out} out · dropped: ${drops(node.dropped)}`;
      drawPlot(view.cpu, node.cpu_history, '%', 10);
      drawPlot(view.sessions, node.session_history, '', 4);
    }
    view.empty.hidden = node.channels.length > 0;
    const seen = new Set();
    for (const channel of node.channels) {
      const key = `${node.name}|${channel.guild_id}/${channel.channel_id}`;
      seen.add(key);
      let card = cards.get(key);
      if (!card) {
        card = channelCard(channel);
        cards.set(key, card);
        view.channels.append(card.card);
      }
      updateChannel(card, channel);
    }
    for (const [key, card] of cards) {
      if (key.startsWith(`${node.name}|`) && !seen.has(key)) { card.card.remove(); cards.delete(key); }
    }
  }
  for (const [name, view] of nodeCards) {
    if (!seenNodes.has(name)) { view.card.remove(); nodeCards.delete(name); }
  }
  renderRecordings(snapshot.recordings);
}

// --- recordings ----------------------------------------------------------------------

function renderRecordings(recordings) {
  const body = document.querySelector('#recordings tbody');
  document.getElementById('no-recordings').hidden = recordings.length > 0;
  document.getElementById('recordings').hidden = recordings.length === 0;
  body.replaceChildren(...recordings.slice().reverse().map((rec) => {
    const files = el('td', { class: 'files' });
    for (const name of rec.files) {
      const link = el('a', { href: `/v1/recordings/${encodeURIComponent(rec.id)}/files/${encodeURIComponent(name)}`, download: name, text: name });
      files.append(link, ' ');
    }
    const stop = el('td');
    if (rec.state === 'recording' || rec.state === 'starting') {
      const button = el('button', { type: 'button', class: 'stop', text: 'Stop' });
      button.addEventListener('click', () => act(`/v1/recordings/${encodeURIComponent(rec.id)}/stop`));
      stop.append(button);
    }
    const speakers = Object.entries(rec.tracks).map(([user, t]) => `${user}: ${t.packets}`).join(', ') || '—';
    const row = el('tr', { class: `recording ${rec.state}` },
      el('td', { text: rec.id }), el('td', { text: `${rec.guild_id}/${rec.channel_id}` }),
      el('td', { text: rec.user_id }), el('td', { class: 'state', text: rec.error ? `${rec.state}: ${rec.error}` : rec.state }),
      el('td', { text: `${rec.elapsed.toFixed(1)} s` }), el('td', { text: speakers }), files, stop);
    row.dataset.recording = rec.id;
    return row;
  }));
}

// --- the stream ----------------------------------------------------------------------

function connect() {
  const stream = new EventSource('/v1/console/events');
  stream.onopen = () => { statusBox.textContent = 'live'; statusBox.className = 'status live'; };
  stream.onmessage = (event) => {
    render(JSON.parse(event.data));
    document.body.dataset.updated = String(Date.now());
  };
  stream.onerror = () => {
    statusBox.textContent = 'reconnecting…';
    statusBox.className = 'status down';
  };
}

document.getElementById('logout').addEventListener('click', async () => {
  await act('/logout');
  window.location.assign('/');
});
connect();
