// Just enough of vitest's API for store-contract.mjs under `deno test`:
// describe/it/beforeAll/afterAll on Deno.test steps, and the expect matchers
// the contract uses. deno.json maps the 'vitest' specifier here.
import { Buffer } from 'node:buffer'
import { isDeepStrictEqual, inspect } from 'node:util'

globalThis.Buffer ??= Buffer // the contract uses Node's global Buffer

let current = null

function suite(name) {
  return { name, children: [], beforeAll: [], afterAll: [] }
}

export function describe(name, fn) {
  const node = suite(name)
  const parent = current
  current = node
  try {
    fn()
  } finally {
    current = parent
  }
  if (parent) parent.children.push(node)
  else Deno.test({ name, sanitizeOps: false, sanitizeResources: false, fn: (t) => runSuite(node, t) })
}

export function it(name, fn) {
  if (!current) throw new Error('it() outside describe() is not supported by this shim')
  current.children.push({ name, fn })
}
export const test = it

export function beforeAll(fn) {
  current.beforeAll.push(fn)
}
export function afterAll(fn) {
  current.afterAll.push(fn)
}

async function runSuite(node, t) {
  for (const hook of node.beforeAll) await hook()
  const failed = []
  try {
    for (const child of node.children) {
      const fn = child.fn ? () => child.fn() : (inner) => runSuite(child, inner)
      if (!(await t.step({ name: child.name, sanitizeOps: false, sanitizeResources: false, fn })))
        failed.push(child.name)
    }
  } finally {
    for (const hook of node.afterAll) await hook()
  }
  if (failed.length > 0) throw new Error(`failed: ${failed.join('; ')}`)
}

const show = (value) => inspect(value, { depth: 4 })

function matchesObject(actual, expected) {
  if (expected === null || typeof expected !== 'object') return Object.is(actual, expected)
  if (actual === null || typeof actual !== 'object') return false
  return Object.keys(expected).every((key) => matchesObject(actual[key], expected[key]))
}

function thrownMatches(error, expected) {
  if (expected === undefined) return true
  if (typeof expected === 'function') return error instanceof expected
  if (expected instanceof RegExp) return expected.test(error?.message ?? String(error))
  return String(error?.message ?? error).includes(String(expected))
}

export function expect(actual) {
  const fail = (what) => {
    throw new Error(`expected ${show(actual)} ${what}`)
  }
  const matchers = {
    toBe: (expected) => Object.is(actual, expected) || fail(`to be ${show(expected)}`),
    toEqual: (expected) => isDeepStrictEqual(actual, expected) || fail(`to equal ${show(expected)}`),
    toMatchObject: (expected) => matchesObject(actual, expected) || fail(`to match ${show(expected)}`),
    toBeNull: () => actual === null || fail('to be null'),
    toBeInstanceOf: (type) => actual instanceof type || fail(`to be an instance of ${type.name}`),
    toBeGreaterThanOrEqual: (n) => actual >= n || fail(`to be >= ${n}`),
    toBeLessThanOrEqual: (n) => actual <= n || fail(`to be <= ${n}`),
  }
  matchers.rejects = {
    async toThrow(expected) {
      let error
      try {
        await actual
      } catch (caught) {
        error = caught
        if (thrownMatches(caught, expected)) return
      }
      throw new Error(
        error === undefined
          ? `expected a rejection matching ${show(expected)}, but it resolved`
          : `expected a rejection matching ${show(expected)}, got ${show(error)}`,
      )
    },
  }
  return matchers
}
