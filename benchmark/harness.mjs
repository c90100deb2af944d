// Side-by-side throughput measurement: each case runs this package's store
// and Stoma's JS store in the same process, alternating short samples so
// that machine noise hits both alike, and reports medians and their ratio.

const now = () => Number(process.hrtime.bigint()) / 1e6

/**
 * Runs `op` (async, one operation per call) for about `ms` milliseconds with
 * `concurrency` callers in flight; answers operations per second.
 */
async function sample(op, { ms, concurrency }) {
  let ops = 0
  const start = now()
  const deadline = start + ms
  const caller = async () => {
    while (now() < deadline) {
      for (let i = 0; i < 16; i++) await op(ops++)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, caller))
  return (ops * 1000) / (now() - start)
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/**
 * The sliding window's bound (issue #18): at most 1.3× fixed's time per
 * call, so sliding's throughput over fixed's ≥ 1 / 1.3, rounded up.
 */
export const SLIDING_TARGET = 0.77

/** The notes of the sliding-window rows, whose "Stoma (JS)" column is not Stoma's. */
export const SLIDING_DETAIL = 'the "Stoma (JS)" column is our fixed window'

/**
 * Measures one case: `setup(context)` answers `{ ours, theirs, teardown? }`,
 * two async functions taking an operation index.
 */
export async function measure(benchCase, context, { sampleMs = 200, log = () => {} } = {}) {
  const samples = benchCase.samples ?? 7
  const { ours, theirs, teardown } = await benchCase.setup(context)
  const options = { ms: sampleMs, concurrency: benchCase.concurrency ?? 1 }
  try {
    // Warm both paths (JIT, connections, caches) before measuring.
    await sample(ours, { ...options, ms: sampleMs / 2 })
    await sample(theirs, { ...options, ms: sampleMs / 2 })
    const oursRates = []
    const theirsRates = []
    for (let i = 0; i < samples; i++) {
      oursRates.push(await sample(ours, options))
      theirsRates.push(await sample(theirs, options))
      log('.')
    }
    const oursMedian = median(oursRates)
    const theirsMedian = median(theirsRates)
    return { ours: oursMedian, theirs: theirsMedian, ratio: oursMedian / theirsMedian }
  } finally {
    await teardown?.()
  }
}

export function formatRate(opsPerSecond) {
  if (opsPerSecond >= 1e6) return `${(opsPerSecond / 1e6).toFixed(2)} M/s`
  if (opsPerSecond >= 1e3) return `${(opsPerSecond / 1e3).toFixed(1)} k/s`
  return `${opsPerSecond.toFixed(0)} /s`
}

/** Mean time per operation, for the table. */
export function formatLatency(opsPerSecond) {
  const us = 1e6 / opsPerSecond
  if (us >= 1000) return `${(us / 1000).toFixed(2)} ms`
  if (us >= 1) return `${us.toFixed(2)} µs`
  return `${(us * 1000).toFixed(0)} ns`
}
