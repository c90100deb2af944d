'use strict'
// The network stores' events on `node:diagnostics_channel` (Node, Bun and
// Deno have it), named `stoma-native:<what>` as node-redis names its own
// `node-redis:<what>`; docs/operations.md lists the messages.
//
// - `stoma-native:connection`: the backend as the calls see it, published
//   when that changes: `{ backend, state: 'up' | 'down', cause? }`, and
//   `{ backend: 'redis', state: 'failover', cause }` when Sentinel moves
//   the primary;
// - `stoma-native:fallback`: `{ backend, active }` when
//   `whenUnavailable: 'memory'` starts or stops answering from memory;
// - `stoma-native:call:start` / `stoma-native:call:end`: every call, with
//   `{ backend, operation, key }`, the same object for both (with `error`
//   set on end if the call failed, so a subscriber can keep a span on it),
//   only while someone subscribes to `:start` — otherwise a call costs one
//   property read.

let channels = null
try {
  const dc = require('node:diagnostics_channel')
  channels = {
    connection: dc.channel('stoma-native:connection'),
    fallback: dc.channel('stoma-native:fallback'),
    start: dc.channel('stoma-native:call:start'),
    end: dc.channel('stoma-native:call:end'),
  }
} catch {
  // A runtime without diagnostics channels: nothing to publish to.
}

function publish(channel, message) {
  if (channel?.hasSubscribers) channel.publish(message)
}

/**
 * Whether the backend answers, as the calls find it: 'unknown' until the
 * first answer, then 'up' or 'down' (a call it did not answer); `outages`
 * counts the changes to 'down'. Changes are published on
 * `stoma-native:connection`.
 */
class Health {
  #backend
  state = 'unknown'
  outages = 0
  failovers = 0

  constructor(backend) {
    this.#backend = backend
  }

  answered() {
    if (this.state === 'up') return
    this.state = 'up'
    publish(channels?.connection, { backend: this.#backend, state: 'up' })
  }

  /** The primary moved (Sentinel): published as state 'failover'. */
  failover(cause) {
    this.failovers++
    publish(channels?.connection, { backend: this.#backend, state: 'failover', cause })
  }

  unavailable(cause) {
    if (this.state === 'down') return
    this.state = 'down'
    this.outages++
    publish(channels?.connection, { backend: this.#backend, state: 'down', cause })
  }

  snapshot() {
    return { state: this.state, outages: this.outages, failovers: this.failovers }
  }
}

function publishFallback(backend, active) {
  publish(channels?.fallback, { backend, active })
}

/** Whether anyone listens to the call channels (one property read). */
const isTracing = () => channels?.start.hasSubscribers === true

/**
 * `run()`'s Promise, its start and end published on the call channels when
 * anyone listens; `run()` alone otherwise.
 */
function traced(backend, operation, key, run) {
  if (!isTracing()) return run()
  const message = { backend, operation, key }
  channels.start.publish(message)
  let answer
  try {
    answer = run()
  } catch (error) {
    message.error = error
    publish(channels.end, message)
    throw error
  }
  return answer.then(
    (value) => {
      publish(channels.end, message)
      return value
    },
    (error) => {
      message.error = error
      publish(channels.end, message)
      throw error
    },
  )
}

module.exports = { Health, publishFallback, isTracing, traced }
