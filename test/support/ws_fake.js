// A scripted WebSocket server for the edge cases of the WebSocket
// transport: it answers the upgrade (or refuses it in a given way), then
// plays a minimal MQTT 3.1.1 broker whose packets are framed in a given
// way. Only node's own modules: it runs without the npm cache. Prints
// "listening <port>" once it accepts connections. It exits with status 3
// when the client breaks the protocol (an unmasked frame, no pong).
//   node ws_fake.js SCENARIO
'use strict';
const crypto = require('crypto');
const net = require('net');

const scenario = process.argv[2];
const CONNACK = Buffer.from([0x20, 0x02, 0x00, 0x00]);

// A PUBLISH at QoS 0 on topic "t" whose payload is `text`.
function publish(text) {
  const payload = Buffer.from(text);
  const body = Buffer.concat([Buffer.from([0x00, 0x01, 0x74]), payload]);
  if (body.length > 127) throw new Error('keep test payloads short');
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}

// A server frame: never masked.
function frame(opcode, payload, fin = true) {
  const len = payload.length;
  let head;
  if (len < 126) {
    head = Buffer.from([(fin ? 0x80 : 0) | opcode, len]);
  } else {
    head = Buffer.from([(fin ? 0x80 : 0) | opcode, 126, len >> 8, len & 0xff]);
  }
  return Buffer.concat([head, payload]);
}

// `data` as one binary message in frames of `size` bytes.
function fragments(data, size) {
  const out = [];
  for (let at = 0; at < data.length; at += size) {
    const last = at + size >= data.length;
    out.push(frame(at === 0 ? 0x2 : 0x0, data.subarray(at, at + size), last));
  }
  return Buffer.concat(out);
}

function accept(key) {
  return crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
}

function upgradeResponse(key) {
  const good = accept(key);
  const lines = ['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket',
    'Connection: Upgrade'];
  switch (scenario) {
    case 'bad-accept': lines.push('Sec-WebSocket-Accept: ' + accept(key + 'x')); break;
    case 'status-200': lines[0] = 'HTTP/1.1 200 OK'; lines.push('Content-Length: 0'); break;
    case 'status-401': lines[0] = 'HTTP/1.1 401 Unauthorized'; break;
    case 'huge-header':
      lines.push('Sec-WebSocket-Accept: ' + good);
      for (let i = 0; i < 200; i++) lines.push(`X-Filler-${i}: ${'y'.repeat(60)}`);
      break;
    case 'no-protocol': lines.push('Sec-WebSocket-Accept: ' + good); break;
    default: lines.push('Sec-WebSocket-Accept: ' + good);
  }
  if (scenario !== 'no-protocol') lines.push('Sec-WebSocket-Protocol: mqtt');
  return lines.join('\r\n') + '\r\n\r\n';
}

function fail(why) {
  console.error('ws_fake: ' + why);
  process.exit(3);
}

// What the server does once the client's CONNECT arrived.
function onConnect(sock, state) {
  switch (scenario) {
    case 'split': {
      // CONNACK one byte per frame, then a PUBLISH in 3-byte frames.
      sock.write(fragments(CONNACK, 1));
      sock.write(fragments(publish('split across many frames'), 3));
      break;
    }
    case 'many': {
      // CONNACK and three PUBLISHes in a single frame.
      const all = Buffer.concat([CONNACK, publish('one'), publish('two'), publish('three')]);
      sock.write(frame(0x2, all));
      break;
    }
    case 'ping': {
      // A ping between the two halves of a PUBLISH; the client must pong.
      sock.write(frame(0x2, CONNACK));
      const p = publish('around a ping');
      sock.write(Buffer.concat([frame(0x2, p.subarray(0, 5), false),
        frame(0x9, Buffer.from('are you there')), frame(0x0, p.subarray(5))]));
      state.wantPong = 'are you there';
      break;
    }
    case 'close': {
      sock.write(frame(0x2, CONNACK));
      sock.write(frame(0x2, publish('before close')));
      const body = Buffer.from([0x03, 0xe8, 0x62, 0x79, 0x65]); // 1000 "bye"
      setTimeout(() => sock.write(frame(0x8, body)), 50);
      state.wantClose = true;
      break;
    }
    case 'text': {
      sock.write(frame(0x2, CONNACK));
      setTimeout(() => sock.write(frame(0x1, Buffer.from('not binary'))), 50);
      break;
    }
    default:
      sock.write(frame(0x2, CONNACK));
  }
}

function onFrame(sock, state, op, payload) {
  if (op === 0x2 || op === 0x0) {
    if (!state.connected) {
      state.connected = true;
      onConnect(sock, state);
    } else if (payload.length >= 1 && (payload[0] >> 4) === 14) {
      sock.end(frame(0x8, Buffer.from([0x03, 0xe8])));
    } else if (payload.length >= 1 && (payload[0] >> 4) === 12) {
      sock.write(frame(0x2, Buffer.from([0xd0, 0x00]))); // PINGRESP
    }
  } else if (op === 0xa) {
    if (state.wantPong !== payload.toString()) fail('pong with the wrong payload');
    state.wantPong = null;
    sock.write(frame(0x2, publish('pong seen')));
  } else if (op === 0x8) {
    if (state.wantClose) sock.end();
    else sock.end(frame(0x8, payload.subarray(0, 2)));
  }
}

function onFrames(sock, state) {
  for (;;) {
    const b = state.buf;
    if (b.length < 2) return;
    const op = b[0] & 0x0f;
    if (!(b[1] & 0x80)) fail('unmasked client frame');
    let len = b[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      if (b.length < 4) return;
      len = b.readUInt16BE(2);
      at = 4;
    } else if (len === 127) {
      if (b.length < 10) return;
      len = Number(b.readBigUInt64BE(2));
      at = 10;
    }
    if (b.length < at + 4 + len) return;
    const mask = b.subarray(at, at + 4);
    const payload = Buffer.from(b.subarray(at + 4, at + 4 + len));
    for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
    state.buf = b.subarray(at + 4 + len);
    onFrame(sock, state, op, payload);
  }
}

const server = net.createServer((sock) => {
  const state = { head: '', buf: Buffer.alloc(0), upgraded: false };
  sock.on('error', () => {});
  sock.on('data', (data) => {
    if (state.upgraded) {
      state.buf = Buffer.concat([state.buf, data]);
      onFrames(sock, state);
      return;
    }
    state.head += data.toString('latin1');
    const end = state.head.indexOf('\r\n\r\n');
    if (end < 0) return;
    // Refusals without an answer: silence (the client's connect timeout
    // ends it) or a hang-up.
    if (scenario === 'silent') return;
    if (scenario === 'hangup') {
      sock.destroy();
      return;
    }
    const m = /\r\nSec-WebSocket-Key: *([^\r]*)\r\n/i.exec(state.head);
    if (!/\r\nSec-WebSocket-Protocol: *mqtt\r\n/i.test(state.head)) fail('no mqtt subprotocol');
    sock.write(upgradeResponse(m ? m[1] : ''));
    state.upgraded = true;
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
