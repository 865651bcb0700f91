// atmx status page: index counts, cursor and lag, backfill progress, and a lookup box.
// Everything shown comes from the public XRPC API and is rendered with textContent only
// (never innerHTML), so record contents cannot inject markup; the CSP forbids inline script too.
'use strict';

const NS = 'directory.atmx';
// Display names; a protocol not listed here (a new record family) shows under its own name.
const PROTOCOL_LABELS = { xmtp: 'XMTP', didcomm: 'DIDComm', germ: 'Germ', catbird: 'Catbird' };
// What the header says for each firehose state (getIndexStatus `state`).
const STATES = {
  live: ['live', 'health-ok'],
  idle: ['idle', 'health-idle'],
  lagging: ['lagging', 'health-lagging'],
  disconnected: ['disconnected', 'health-down'],
};
const REFRESH_MS = 10000;
const MAX_INBOX_ACCOUNTS = 10;

const label = (protocol) => PROTOCOL_LABELS[protocol] || protocol;

const $ = (id) => document.getElementById(id);

// el('dd', {class: 'mono'}, 'text', childNode, ...): builds a node; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class XrpcFailure extends Error {
  constructor(status, name, message) {
    super(message || name || `HTTP ${status}`);
    this.status = status;
    this.name = name || 'Error';
  }
}

async function xrpc(method, params) {
  const query = new URLSearchParams(params || {});
  const resp = await fetch(`/xrpc/${method}${query.size ? '?' + query : ''}`, { headers: { Accept: 'application/json' } });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* a proxy's HTML error page */ }
  if (!resp.ok) throw new XrpcFailure(resp.status, body && body.error, body && body.message);
  return body;
}

const number = (n) => Number(n).toLocaleString('en-US');

function duration(seconds) {
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

// --- index status ---------------------------------------------------------------------

// One block per protocol, with the statuses the API lists for it (each status the protocol's
// bindings can have, 0 included), in the API's order: built from the data, so a new protocol
// or status needs no change here.
function renderCounts(rows) {
  const byProtocol = new Map();
  for (const row of rows) {
    if (!byProtocol.has(row.protocol)) byProtocol.set(row.protocol, []);
    byProtocol.get(row.protocol).push(row);
  }
  $('counts').replaceChildren(...[...byProtocol].map(([protocol, statuses]) => {
    const total = statuses.reduce((sum, r) => sum + r.count, 0);
    return el('section', { class: 'protocol', 'data-protocol': protocol },
      el('h3', {}, label(protocol), ' ', el('span', { class: 'total', 'data-testid': `count-${protocol}-total` }, number(total))),
      el('dl', {}, ...statuses.map((r) => el('div', {},
        el('dt', { class: `status-${r.status}` }, r.status),
        el('dd', { 'data-testid': `count-${protocol}-${r.status}` }, number(r.count))))));
  }));
}

function renderBackfill(b) {
  const box = $('backfill');
  box.hidden = !b;
  if (!b) return;
  const finished = b.done + b.skipped;
  $('backfill-bar').max = Math.max(b.repos, 1);
  $('backfill-bar').value = finished;
  const parts = [
    b.complete ? 'Complete: ' : 'In progress: ',
    `${number(finished)} of ${number(b.repos)} repositories done`,
    ` (${number(b.pending)} pending, ${number(b.failed)} failed, ${number(b.skipped)} skipped); `,
    `${number(b.sourcesComplete)} of ${number(b.sources)} sources listed; `,
    `${number(b.resyncQueue)} in the gap-repair queue.`,
  ];
  $('backfill-text').textContent = parts.join('');
}

async function loadStatus() {
  try {
    const [status, health] = await Promise.all([
      xrpc(`${NS}.getIndexStatus`),
      fetch('/xrpc/_health').then((r) => r.json()).catch(() => ({})),
    ]);
    $('status-error').hidden = true;
    $('version').textContent = health.version || '?';
    $('accounts').textContent = number(status.accounts);
    $('cursor').textContent = status.cursor === undefined ? 'none yet' : number(status.cursor);
    $('lag').textContent = status.lagSeconds === undefined ? '–' : duration(status.lagSeconds);
    $('idle').textContent = status.idleSeconds === undefined ? 'none yet' : `${duration(status.idleSeconds)} ago`;
    const [text, cls] = health.error ? ['database unavailable', 'health-down'] : STATES[status.state] || [status.state, ''];
    $('health').textContent = text;
    $('health').className = cls;
    renderCounts(status.bindings);
    renderBackfill(status.backfill);
    document.body.dataset.statusLoaded = 'true';
  } catch (err) {
    $('status-error').hidden = false;
    $('status-error').textContent = `Could not load the index status: ${err.message}`;
    $('health').textContent = 'unreachable';
    $('health').className = 'health-down';
  }
}

// --- lookup ---------------------------------------------------------------------------

function fact(dl, label, value, testid, cls) {
  if (value === undefined || value === null || value === '') return;
  dl.append(el('dt', {}, label), el('dd', { 'data-testid': testid, class: cls }, value));
}

function badge(status, reason) {
  return el('span', {}, el('span', { class: `badge status-${status}` }, status), reason ? ` (${reason})` : null);
}

function bindingCard(protocol, b) {
  const dl = el('dl', {});
  fact(dl, 'Status', badge(b.status, b.reason), `${protocol}-status`);
  if (protocol === 'xmtp') {
    fact(dl, 'Inbox ID', b.inboxId, 'xmtp-inbox', 'mono');
    fact(dl, 'XMTP environment', b.env, 'xmtp-env');
    fact(dl, 'Installation', b.installationId, 'xmtp-installation', 'mono');
    fact(dl, 'Verified at', b.verifiedAt, 'xmtp-verified-at');
  } else if (protocol === 'didcomm') {
    fact(dl, 'DIDComm DID', b.did, 'didcomm-did', 'mono');
    if (Array.isArray(b.mediators)) {
      const list = el('ul', { class: 'plain' }, ...b.mediators.map((m) => el('li', { class: 'mono' }, m)));
      fact(dl, 'Mediators', list, 'didcomm-mediators');
    }
    fact(dl, 'Label', b.label, 'didcomm-label');
  }
  fact(dl, 'Record URI', b.uri, `${protocol}-uri`, 'mono');
  fact(dl, 'Record CID', b.cid, `${protocol}-cid`, 'mono');
  fact(dl, 'Created', b.createdAt, `${protocol}-created`);
  fact(dl, 'Indexed', b.indexedAt, `${protocol}-indexed`);
  const title = { xmtp: 'XMTP inbox', didcomm: 'DIDComm key package' }[protocol] || label(protocol);
  return el('div', { class: 'binding', 'data-testid': `binding-${protocol}` }, el('h4', {}, title), dl);
}

// Germ and Catbird: their own cards, shown when the account publishes them.
function germCard(g) {
  const dl = el('dl', {});
  fact(dl, 'Status', badge(g.status, g.reason), 'germ-status');
  fact(dl, 'Version', g.version, 'germ-version');
  if (g.currentKey) fact(dl, 'Current key', `${g.keyAlgorithm}: ${g.currentKey.$bytes}`, 'germ-key', 'mono');
  if (g.messageMe) {
    const who = g.messageMe.showButtonToKnown ? g.messageMe.showButtonTo : `${g.messageMe.showButtonTo} (unknown value)`;
    fact(dl, 'Message me', el('span', {}, el('span', { class: 'mono' }, g.messageMe.messageMeUrl), ` — button for ${who}`),
      'germ-message-me');
  }
  if (g.keyPackage) fact(dl, 'Key package', `${number(g.keyPackage.size)} bytes, signature not checked`, 'germ-key-package');
  if (g.continuityProofs) fact(dl, 'Continuity proofs', number(g.continuityProofs), 'germ-continuity');
  fact(dl, 'Record URI', g.uri, 'germ-uri', 'mono');
  fact(dl, 'Record CID', g.cid, 'germ-cid', 'mono');
  fact(dl, 'Indexed', g.indexedAt, 'germ-indexed');
  return el('div', { class: 'binding', 'data-testid': 'binding-germ' }, el('h4', {}, 'Germ'), dl);
}

function catbirdCard(c) {
  const dl = el('dl', {});
  const d = c.declaration;
  if (d) {
    fact(dl, 'Declaration', badge(d.status, d.reason), 'catbird-declaration-status');
    fact(dl, 'Allow incoming', d.allowIncoming, 'catbird-allow-incoming');
    fact(dl, 'Declaration URI', d.uri, 'catbird-declaration-uri', 'mono');
  }
  const ds = c.deliveryService;
  if (ds) {
    const where = ds.source === 'didDocument' ? `${ds.endpoint} (DID document)` : `${ds.did} (declaration)`;
    fact(dl, 'Delivery service', where, 'catbird-delivery-service', 'mono');
  }
  const devices = c.devices.map((v) => el('li', { 'data-testid': 'catbird-device' },
    badge(v.status, v.reason), ' ', el('span', { class: 'mono' }, v.deviceId),
    v.algorithm ? ` ${v.algorithm}` : null, v.legacy ? ' (legacy)' : null,
    v.mlsSignaturePublicKey ? el('div', { class: 'mono' }, v.mlsSignaturePublicKey.$bytes) : null));
  fact(dl, 'Devices', devices.length ? el('ul', { class: 'plain' }, ...devices) : 'none', 'catbird-devices');
  return el('div', { class: 'binding', 'data-testid': 'binding-catbird' }, el('h4', {}, 'Catbird MLS chat'), dl);
}

// The proof atmx kept of a record (getBindingProof): its metadata from a HEAD request, and a link
// to download the CAR that any atproto library can check alone.
// Loads a card starts after it is built; a lookup is done once they have all settled.
let pending = [];

function proofBox(uri, testid) {
  const dl = el('dl', { class: 'proof', 'data-testid': testid });
  const url = `/xrpc/${NS}.getBindingProof?${new URLSearchParams({ uri })}`;
  pending.push(fetch(url, { method: 'HEAD' }).then((resp) => {
    if (!resp.ok) { fact(dl, 'Proof', 'none kept', `${testid}-none`); return; }
    const h = (name) => resp.headers.get(name);
    fact(dl, 'Proof rev', h('Atmx-Rev'), `${testid}-rev`, 'mono');
    fact(dl, 'Signing key', h('Atmx-Signing-Key'), `${testid}-key`, 'mono');
    fact(dl, 'PDS', h('Atmx-Pds'), `${testid}-pds`, 'mono');
    fact(dl, 'Verified at', h('Atmx-Observed-At'), `${testid}-observed`);
    const name = uri.split('/').slice(-2).join('-') + '.car';
    fact(dl, 'Proof', el('a', { href: url, download: name, 'data-testid': `${testid}-download` }, 'download CAR'),
      `${testid}-link`);
  }).catch(() => fact(dl, 'Proof', 'unavailable', `${testid}-none`)));
  return dl;
}

// Every version atmx has seen of the account's bindings (getBindingHistory), newest first.
function historyBox(did) {
  const box = el('div', { class: 'binding history', 'data-testid': 'history' }, el('h4', {}, 'History'));
  pending.push(xrpc(`${NS}.getBindingHistory`, { did, limit: '20' }).then((body) => {
    const rows = body.versions.map((v) => el('li', { 'data-testid': 'history-version' },
      el('span', {}, v.observedAt), ' ', label(v.protocol), ' ', v.action, ' ', badge(v.status, v.reason),
      v.cid ? el('div', { class: 'mono' }, v.cid) : null));
    box.append(rows.length ? el('ul', { class: 'plain' }, ...rows) : el('p', {}, 'none'));
  }).catch(() => box.append(el('p', {}, 'unavailable'))));
  return box;
}

function withProof(card, uri, testid) {
  if (uri) card.append(proofBox(uri, testid));
  return card;
}

function identityCard(identity) {
  const dl = el('dl', {});
  fact(dl, 'DID', identity.did, 'identity-did', 'mono');
  fact(dl, 'Handle', identity.handle, 'identity-handle');
  fact(dl, 'Account', identity.accountStatus, 'identity-account');
  const card = el('article', { class: 'card', 'data-testid': 'identity' },
    el('h3', {}, identity.handle !== 'handle.invalid' ? identity.handle : identity.did), dl);
  const known = Object.keys(PROTOCOL_LABELS);
  const protocols = [...known, ...Object.keys(identity).filter((key) => !known.includes(key))];
  for (const protocol of protocols) {
    const b = identity[protocol];
    if (b && typeof b === 'object' && !Array.isArray(b) && 'status' in b && protocol !== 'germ') {
      card.append(withProof(bindingCard(protocol, b), b.uri, `proof-${protocol}`));
    }
  }
  if (identity.germ) card.append(withProof(germCard(identity.germ), identity.germ.uri, 'proof-germ'));
  if (identity.catbird) {
    const d = identity.catbird.declaration;
    card.append(withProof(catbirdCard(identity.catbird), d && d.uri, 'proof-catbird'));
  }
  card.append(historyBox(identity.did));
  return card;
}

async function lookup(raw) {
  const q = raw.trim();
  const out = $('lookup-result');
  const error = $('lookup-error');
  out.replaceChildren();
  error.hidden = true;
  delete document.body.dataset.lookupDone;
  try {
    if (/^[0-9a-f]{64}$/.test(q)) {
      const found = await xrpc(`${NS}.resolveXmtpInbox`, { inboxId: q, includeUnverified: 'true' });
      if (!found.accounts.length) throw new Error(`No account claims XMTP inbox ${q}`);
      const dids = found.accounts.slice(0, MAX_INBOX_ACCOUNTS).map((a) => a.did);
      const identities = await Promise.all(dids.map((did) => xrpc(`${NS}.getIdentity`, { actor: did })));
      out.replaceChildren(...identities.map(identityCard));
    } else {
      const actor = q.startsWith('@') ? q.slice(1) : q;
      out.replaceChildren(identityCard(await xrpc(`${NS}.getIdentity`, { actor })));
    }
    await Promise.allSettled(pending);
  } catch (err) {
    error.hidden = false;
    error.textContent = err.message;
  } finally {
    pending = [];
    document.body.dataset.lookupDone = 'true';
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('lookup').addEventListener('submit', (event) => {
    event.preventDefault();
    const q = $('lookup-input').value;
    history.replaceState(null, '', '#' + new URLSearchParams({ q }));
    lookup(q);
  });
  const initial = new URLSearchParams(location.hash.slice(1)).get('q');
  if (initial) {
    $('lookup-input').value = initial;
    lookup(initial);
  }
  loadStatus();
  setInterval(() => { if (!document.hidden) loadStatus(); }, REFRESH_MS);
});
