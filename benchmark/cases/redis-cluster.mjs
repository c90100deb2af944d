// Redis Cluster: ours (one pipelined connection per primary, calls routed by
// slot) against Stoma's redisAdapter on ioredis.Cluster, on a private
// 3-primary, 3-replica cluster each case starts on loopback and stops by pid.
import Redis from 'ioredis'
import { redisAdapter } from 'stoma-native'
import { startCluster } from '../../__test__/support/redis-servers.mjs'
import { circuitCase, incrementCase } from './network.mjs'

async function adapters(stoma) {
  const cluster = await startCluster()
  const seed = cluster.nodes[0].port
  const client = new Redis.Cluster([{ host: '127.0.0.1', port: seed }])
  const ours = redisAdapter({ cluster: { nodes: [cluster.url(seed)] }, prefix: 'bench:ours:' })
  const theirs = stoma.redisAdapter({ client, prefix: 'bench:stoma:' })
  return {
    ours,
    theirs,
    async teardown() {
      await ours.close()
      client.disconnect()
      await cluster.stop()
    },
  }
}

export default function redisClusterCases() {
  return [
    incrementCase('redis cluster: rate-limit increment, sequential', { adapters, concurrency: 1, target: 1.5 }),
    incrementCase('redis cluster: rate-limit increment, 64 in flight', { adapters, concurrency: 64, target: 1.5 }),
    circuitCase('redis cluster: circuit recordFailure, 64 in flight', { adapters, concurrency: 64 }),
  ]
}
