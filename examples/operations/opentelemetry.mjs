// Traces of the network stores' calls with OpenTelemetry: a span per call,
// from the `stoma-native:call:start` / `:end` diagnostics channels (which
// cost nothing while nobody subscribes). Spans go to the console here; use
// your exporter instead.
//
//   node examples/operations/opentelemetry.mjs   (Redis on REDIS_URL or 127.0.0.1:6379)
import dc from 'node:diagnostics_channel'
import { BasicTracerProvider, ConsoleSpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { redisAdapter } from 'stoma-native'

const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(new ConsoleSpanExporter())] })
const tracer = provider.getTracer('stoma-native')

// start and end get the same message object, so the span can ride on it.
const spans = new WeakMap()
dc.subscribe('stoma-native:call:start', (message) => {
  const span = tracer.startSpan(`${message.backend} ${message.operation}`, {
    attributes: { 'db.system': message.backend, 'stoma.operation': message.operation, 'stoma.key': message.key },
  })
  spans.set(message, span)
})
dc.subscribe('stoma-native:call:end', (message) => {
  const span = spans.get(message)
  if (message.error) span?.recordException(message.error)
  span?.end()
})

const adapter = redisAdapter({ url: process.env.REDIS_URL, prefix: 'otel-example:' })
await adapter.rateLimitStore.increment('client-1', 60)
await adapter.circuitBreakerStore.getState('upstream')
await adapter.close()
await provider.shutdown()
