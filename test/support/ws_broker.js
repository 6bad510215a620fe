// An MQTT 3.1.1 broker (aedes) behind a WebSocket server (ws), for the
// WebSocket tests. Listens on 127.0.0.1, port chosen by the system, and
// prints "listening <port>" once it accepts connections.
//   node ws_broker.js [--tls CERT KEY]
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const { pathToFileURL } = require('url');
const { WebSocketServer, createWebSocketStream } = require('ws');

async function main() {
// aedes is an ES module, which import() finds without NODE_PATH: resolve
// its path the CommonJS way (NODE_PATH included) first.
const { Aedes } = await import(pathToFileURL(require.resolve('aedes')).href);
const aedes = await Aedes.createBroker();
const args = process.argv.slice(2);
const server = args[0] === '--tls'
  ? https.createServer({ cert: fs.readFileSync(args[1]), key: fs.readFileSync(args[2]) })
  : http.createServer();
const wss = new WebSocketServer({
  server,
  handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : false),
});
wss.on('connection', (socket) => {
  const stream = createWebSocketStream(socket);
  stream.on('error', () => stream.destroy());
  aedes.handle(stream);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
}
process.on('SIGTERM', () => process.exit(0));
main().catch((err) => {
  console.error(err);
  process.exit(1);
});
