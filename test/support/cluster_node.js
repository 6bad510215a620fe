// One node of the test broker cluster: an aedes broker on 127.0.0.1:<port>
// whose sessions, subscriptions, retained messages and offline queues live in
// a shared Redis (aedes-persistence-redis), and whose messages reach the other
// nodes through the same Redis (mqemitter-redis). Started and killed by
// test/support/cluster.c; prints "listening <port>" once it accepts.
//
// Usage: node cluster_node.js <port> <redis-port> <node-id>
'use strict'

const net = require('net')
const { Aedes } = require('aedes')
const redisPersistence = require('aedes-persistence-redis')
const mqemitterRedis = require('mqemitter-redis')

const port = Number(process.argv[2])
const redisPort = Number(process.argv[3])
const id = process.argv[4] || 'node-' + port

async function main () {
  const redis = { host: '127.0.0.1', port: redisPort }
  const broker = await Aedes.createBroker({
    id,
    // No ready check on the emitter's connections: after a reconnect
    // ioredis would send INFO on a connection already in subscriber mode
    // and fail the node at start with "only subscriber commands may be
    // used".
    mq: mqemitterRedis({ ...redis, enableReadyCheck: false }),
    // The default delivers at most 1000 offline messages per reconnect and
    // silently drops the rest; a failover test queues far more than that.
    persistence: redisPersistence({ ...redis, maxSessionDelivery: 1000000 }),
    // A client that moves here while its old node is being killed must not
    // wait for the heartbeat to time the old node out.
    heartbeatInterval: 1000,
    concurrency: 1000
  })
  const server = net.createServer(broker.handle)
  server.listen(port, '127.0.0.1', () => {
    process.stdout.write('listening ' + port + '\n')
  })
  server.on('error', (err) => {
    process.stderr.write('listen failed: ' + err.message + '\n')
    process.exit(2)
  })
  // A lost Redis is fatal for a node: the test restarts it.
  broker.on('connectionError', () => {})
}

main().catch((err) => {
  process.stderr.write('cluster node failed: ' + (err && err.stack ? err.stack : err) + '\n')
  process.exit(1)
})
