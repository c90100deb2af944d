// Fuzzing the circuit JSON parser. The Redis circuit snapshot is parsed on
// the server, by cjson.decode inside the circuit Lua script (src/redis.rs,
// CIRCUIT_LUA); there is no Rust parser for it. So this drives that parser
// through the public store: the checked-in seed corpus (__test__/fixtures/fuzz-corpus/circuit/)
// and seeded random mutations of a valid snapshot are written raw under
// `<prefix>cb:<key>`, then every operation must answer a well-formed snapshot
// (a valid value is continued, anything else reads as a fresh closed
// circuit) and never reject.
import { readFileSync, readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import Redis from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { redisAdapter } from '../../index.mjs'
import { REDIS_URL } from '../support/processes.mjs'
import { deleteRedisKeys } from '../../scripts/cleanup.mjs'

const corpus = fileURLToPath(new URL('../fixtures/fuzz-corpus/circuit/', import.meta.url))
const PREFIX = `fuzzcb${process.pid}_${Date.now().toString(36)}:`
const CASES = 1500
const STATES = ['closed', 'open', 'half-open']

/** A small deterministic PRNG (mulberry32), so failures reproduce from the seed. */
function prng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const VALID =
  '{"state":"open","failureCount":3,"successCount":1,"lastFailureTime":1700000000000,"lastStateChange":1700000000000}'
const TOKENS = [
  '{',
  '}',
  '[',
  ']',
  ',',
  ':',
  '"',
  '\\',
  '\\u0000',
  'null',
  'true',
  '-',
  '1e999',
  '0.5',
  'NaN',
  '"state"',
  '"open"',
  '9007199254740993',
  '\x00',
  '\xff',
]

function mutate(random) {
  let text = VALID
  const edits = 1 + Math.floor(random() * 4)
  for (let e = 0; e < edits; e++) {
    const at = Math.floor(random() * (text.length + 1))
    const kind = random()
    if (kind < 0.33) text = text.slice(0, at) + text.slice(at + 1 + Math.floor(random() * 8))
    else if (kind < 0.66) text = text.slice(0, at) + TOKENS[Math.floor(random() * TOKENS.length)] + text.slice(at)
    else text = text.slice(0, at) + String.fromCharCode(Math.floor(random() * 256)) + text.slice(at + 1)
  }
  return Buffer.from(text, 'latin1')
}

function expectSnapshot(snapshot, context) {
  expect(STATES, context).toContain(snapshot.state)
  for (const field of ['failureCount', 'successCount', 'lastFailureTime', 'lastStateChange']) {
    expect(
      Number.isSafeInteger(snapshot[field]) && snapshot[field] >= 0,
      `${context}: ${field} = ${snapshot[field]}`,
    ).toBe(true)
  }
}

describe('reliability: fuzzing the Redis circuit JSON parser (cjson in the circuit script)', () => {
  let client, adapter
  beforeAll(() => {
    client = new Redis(REDIS_URL)
    adapter = redisAdapter({ url: REDIS_URL, prefix: PREFIX })
  })
  afterAll(async () => {
    await deleteRedisKeys(PREFIX, client)
    client.disconnect()
    await adapter.close()
  })

  /** Writes `raw` under the circuit key, runs every operation, checks each answer. */
  async function probe(key, raw, context) {
    await client.set(`${PREFIX}cb:${key}`, raw)
    const read = await adapter.circuitBreakerStore.getState(key)
    expectSnapshot(read, context)
    const failed = await adapter.circuitBreakerStore.recordFailure(key)
    expectSnapshot(failed, context)
    // A readable snapshot is continued; garbage starts over at one failure.
    expect(failed.failureCount, context).toBe(read.failureCount + 1)
    expect(failed.state, context).toBe(read.state)
    expectSnapshot(await adapter.circuitBreakerStore.transition(key, 'half-open'), context)
    return read
  }

  it('replays the seed corpus: valid-* are continued, bad-* read as a fresh closed circuit', async () => {
    const files = readdirSync(corpus)
    expect(files.length).toBeGreaterThanOrEqual(15)
    for (const file of files) {
      const read = await probe(`seed:${file}`, readFileSync(`${corpus}${file}`), file)
      if (file.startsWith('valid-open') || file === 'valid-with-1mib-padding.json')
        expect(read.state, file).toBe('open')
      if (file.startsWith('bad-'))
        expect(read, file).toMatchObject({ state: 'closed', failureCount: 0, successCount: 0, lastFailureTime: 0 })
    }
  })

  // A count at Number.MAX_SAFE_INTEGER must saturate: 2^53 would read back
  // as garbage and the open circuit would be forgotten.
  it('a failure count already at Number.MAX_SAFE_INTEGER saturates instead of leaving the safe range', async () => {
    const key = 'max-safe'
    await client.set(
      `${PREFIX}cb:${key}`,
      '{"state":"open","failureCount":9007199254740991,"successCount":0,"lastFailureTime":0,"lastStateChange":0}',
    )
    const failed = await adapter.circuitBreakerStore.recordFailure(key)
    expect(failed.failureCount).toBe(Number.MAX_SAFE_INTEGER)
    expect((await adapter.circuitBreakerStore.getState(key)).state).toBe('open')
  })

  it(`${CASES} seeded random mutations of a valid snapshot never fail a call`, async () => {
    const seed = Number(process.env.STOMA_FUZZ_SEED ?? 0x5eed)
    const random = prng(seed)
    const batch = 50
    for (let start = 0; start < CASES; start += batch) {
      await Promise.all(
        Array.from({ length: batch }, (_, j) => {
          const raw = mutate(random)
          return probe(
            `m${start + j}`,
            raw,
            `seed ${seed} case ${start + j}: ${JSON.stringify(raw.toString('latin1'))}`,
          )
        }),
      )
    }
  })
})
