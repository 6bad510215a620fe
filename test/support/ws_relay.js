// A WebSocket-to-TCP relay: each WebSocket connection (subprotocol "mqtt")
// gets its own TCP connection to 127.0.0.1:TARGET and the bytes of binary
// messages go through unchanged both ways. Puts a WebSocket front on a
// Mosquitto started by the test (Debian 12's Mosquitto cannot serve
// WebSocket itself). Prints "listening <port>" once it accepts connections.
//   node ws_relay.js TARGET [--tls CERT KEY]
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const net = require('net');
const { WebSocketServer, createWebSocketStream } = require('ws');

const args = process.argv.slice(2);
const target = Number(args[0]);
const server = args[1] === '--tls'
  ? https.createServer({ cert: fs.readFileSync(args[2]), key: fs.readFileSync(args[3]) })
  : http.createServer();
const wss = new WebSocketServer({
  server,
  handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : false),
});
wss.on('connection', (socket) => {
  const stream = createWebSocketStream(socket);
  const tcp = net.connect(target, '127.0.0.1');
  tcp.setNoDelay(true);
  const end = () => { stream.destroy(); tcp.destroy(); };
  stream.on('error', end);
  tcp.on('error', end);
  stream.pipe(tcp);
  tcp.pipe(stream);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
