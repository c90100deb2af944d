// stats() exported to Prometheus with prom-client: gauges read from
// adapter.stats() each time Prometheus scrapes, labelled by store. Prints
// the exposition text after a few calls; in a server, answer GET /metrics
// with `await register.metrics()`.
//
//   node examples/operations/prometheus.mjs
import { Gauge, Registry } from 'prom-client'
import { memoryAdapter } from 'stoma-native'

const adapter = memoryAdapter()
const register = new Registry()

/** A gauge of one figure of each store's stats, read at scrape time. */
function storeGauge(name, help, read) {
  return new Gauge({
    name: `stoma_native_${name}`,
    help,
    labelNames: ['store'],
    registers: [register],
    collect() {
      for (const [store, stats] of Object.entries(adapter.stats())) {
        const value = read(stats)
        if (typeof value === 'number') this.set({ store }, value)
      }
    },
  })
}

storeGauge('calls', 'Store calls made', (s) => s.calls)
storeGauge('errors', 'Store calls that failed', (s) => s.errors)
storeGauge('unavailable', 'Store calls the backend did not answer', (s) => s.unavailable)
storeGauge('cache_hits', 'Cache reads that found an entry', (s) => s.hits)
storeGauge('cache_misses', 'Cache reads that found none', (s) => s.misses)
storeGauge('latency_p99_microseconds', 'p99 of the timed calls, in µs', (s) => s.latencyMicros?.p99 ?? undefined)

for (let i = 0; i < 100; i++) await adapter.rateLimitStore.increment(`client-${i % 7}`, 60)
await adapter.cacheStore.get('missing')

console.log(await register.metrics())
await adapter.close()
