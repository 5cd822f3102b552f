#!/usr/bin/env node
// An "any executable" worker written from sdk/PROTOCOL.md alone: no SDK,
// plain Node.js. It implements every conformance route in one program and
// picks the behaviour from hello.route, so it is also a template for a
// route in a language without an SDK (copy it, keep one route).
'use strict';

const HOOKS = {
  basic: ['on_request'],
  allhooks: ['on_request', 'on_failure', 'on_reply'],
  counter: ['on_request'],
  services: ['on_request', 'on_reply'],
};

let route = null;
let stopping = false;
let inFlight = 0;
let nextCall = 0;
const calls = new Map();           // call id -> resolve(result message)

function send(msg) { process.stdout.write(JSON.stringify(msg) + '\n'); }
function header(headers, name) {
  const h = (headers || []).find(([n]) => n.toLowerCase() === name.toLowerCase());
  return h ? h[1] : null;
}
function call(eventId, op, args) {
  const id = ++nextCall;
  send({ type: 'call', id, event: eventId, op, args });
  return new Promise((resolve) => calls.set(id, resolve));
}
async function kv(eventId, op, args) {
  const res = await call(eventId, op, args);
  if ('error' in res) throw new Error(op + ': ' + res.error);
  return res.value;
}

async function basic(ev, v, vars) {
  switch (ev.ruri_user) {
    case 'reply': v.push(['reply', 486, 'Busy Here']); break;
    case 'relay':
      v.push(['record_route']);
      v.push(['relay', ['sip:a@b.example', 'sip:c@d.example'], { mode: 'serial', timeout: 5 }]);
      break;
    case 'relay1': v.push(['relay', 'sip:one@b.example']); break;
    case 'redirect': v.push(['redirect', ['sip:x@y.example']]); break;
    case 'drop': v.push(['drop']); break;
    case 'edit':
      v.push(['set_ruri', 'sip:new@host.example'], ['set_header', 'X-A', '1'],
             ['add_header', 'X-B', '2'], ['remove_header', 'X-C']);
      break;
    case 'hdr': {
      const multi = (ev.headers || []).filter(([n]) => n.toLowerCase() === 'x-multi').length;
      v.push(['reply', 200, 'OK', [['X-Echo', header(ev.headers, 'X-In') || 'none'], ['X-Count', String(multi)]]]);
      break;
    }
    case 'info': {
      const f = [ev.method, ev.ruri, ev.ruri_host, ev.from_uri, ev.from_tag, ev.to_uri, ev.call_id,
                 String(ev.cseq), ev.source_ip, String(ev.source_port), ev.transport,
                 ev.in_dialog ? 'yes' : 'no', ev.body];
      v.push(['reply', 200, f.join('|')]);
      break;
    }
    case 'vars': vars.count = (vars.count || 0) + 1; v.push(['relay']); return true;
    case 'boom': throw new Error('boom');
  }
  return false;
}

async function allhooks(ev, v, _vars, hook) {
  const reply = ev.reply || {};
  if (hook === 'on_request') v.push(['relay', 'sip:first@b.example']);
  else if (hook === 'on_failure') {
    if (reply.code === 486) v.push(['relay', ['sip:voicemail@b.example']]);
    else v.push(['reply', reply.code, 'Failed: ' + reply.reason]);
  } else {
    v.push(['set_header', 'X-Seen', String(reply.code)]);
    if (header(reply.headers, 'X-Drop') === 'yes') v.push(['drop']);
  }
  return false;
}

async function counter(ev, v, _vars, _hook, id) {
  if (ev.ruri_user === 'err') {
    await kv(id, 'kv.get', ['forbidden']);
    v.push(['reply', 500, 'unreachable']);
    return false;
  }
  const n = await kv(id, 'kv.incr', ['calls', 1]);
  const last = await kv(id, 'kv.get', ['last']);
  await kv(id, 'kv.set', ['last', ev.ruri_user, 60]);
  v.push(['reply', 200, `n=${n} last=${last || ''}`]);
  return false;
}

// The services: verbs sent as the wire names them, host calls as plain calls.
async function services(ev, v, _vars, hook, id) {
  if (hook === 'on_reply') { v.push(['fix_contact']); return false; }
  if (ev.method === 'REGISTER') {
    v.push(['authenticate', 'example.com', { password: 'secret' }], ['save', { max_expires: 3600 }]);
    return false;
  }
  switch (ev.ruri_user) {
    case 'local': v.push(['lookup']); break;
    case 'away': v.push(['lookup', { code: 480, reason: 'Temporarily Unavailable', timeout: 20 }]); break;
    case 'nat': v.push(['fix_contact'], ['relay']); break;
    case 'cap': {
      const n = await kv(id, 'dialog.count', ['caller', ev.from_uri]);
      if (n >= 2) { v.push(['reply', 486, 'Too many calls']); break; }
      v.push(['add_profile', 'caller', ev.from_uri], ['limit_duration', 3600], ['relay']);
      break;
    }
    case 'where': {
      const found = await kv(id, 'registrar.lookup', ['sip:bob@example.com']);
      v.push(['reply', 200, `n=${found.length} first=${found.length ? found[0].contact : ''}`]);
      break;
    }
    case 'who': v.push(['reply', 200, 'user=' + (ev.auth_user || '')]); break;
    case 'strict':
      v.push(['authenticate', 'example.com', { ha1: '5f4dcc3b5aa765d61d8327deb882cf99',
                                               algorithms: ['SHA-256', 'MD5'], identity: false }],
             ['add_profile', 'all'], ['relay']);
      break;
  }
  return false;
}

const ROUTES = { basic, allhooks, counter, services };

async function onEvent(msg) {
  inFlight++;
  const ev = msg.event || {};
  const vars = Object.assign({}, ev.vars || {});
  const verbs = [];
  try {
    const changed = await ROUTES[route](ev, verbs, vars, msg.hook, msg.id);
    const out = { type: 'decision', id: msg.id, verbs };
    if (changed) out.vars = vars;
    send(out);
  } catch (e) {
    send({ type: 'error', id: msg.id, message: String(e && e.message || e) });
  } finally {
    inFlight--;
    maybeExit();
  }
}

function maybeExit() {
  if (stopping && inFlight === 0) process.stdout.end(() => process.exit(0));
}

function onMessage(msg) {
  switch (msg.type) {
    case 'hello':
      route = msg.route;
      if (msg.protocol !== 1 || !ROUTES[route]) {
        send({ type: 'fatal', message: `cannot serve route ${route} (protocol ${msg.protocol})` });
        process.stdout.end(() => process.exit(1));
        return;
      }
      send({ type: 'ready', protocol: 1, sdk: 'conformance.js/1', hooks: HOOKS[route] });
      break;
    case 'event': onEvent(msg); break;
    case 'ping': send({ type: 'pong', id: msg.id }); break;
    case 'result': {
      const resolve = calls.get(msg.id);
      if (resolve) { calls.delete(msg.id); resolve(msg); }
      break;
    }
    case 'shutdown': stopping = true; maybeExit(); break;
    default: break; // unknown host messages are ignored (PROTOCOL.md)
  }
}

let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buf += chunk;
  let nl;
  while ((nl = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    if (!line.trim()) continue;
    let msg;
    try { msg = JSON.parse(line); } catch (e) { console.error('bad line from host:', line); continue; }
    onMessage(msg);
  }
});
process.stdin.on('end', () => process.exit(0));
