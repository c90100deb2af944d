import { countCalls } from '../lib/stats.js'
import { checkBinding, checkKey, checkSeconds, describe } from '../lib/validate.js'

const DEFAULT_CACHE_ORIGIN = 'https://stoma-native.cache.internal'

// The original status and headers travel in this header of the stored entry.
const ENVELOPE_HEADER = 'x-stoma-native-envelope'

// Statuses whose Response must not carry a body.
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304])

/**
 * Cached responses in the Workers Cache API (`caches.default` unless a
 * Cache is given), keyed by a synthetic URL under `origin`. The Cache API
 * is an HTTP cache: it silently refuses 204, 304, 5xx and Set-Cookie
 * responses and adds headers of its own (age, cf-cache-status…). So every
 * entry is stored as a plain 200 whose body is the original body and whose
 * `x-stoma-native-envelope` header records the original status and headers;
 * `get` rebuilds the response exactly. Entries expire after ttlSeconds
 * (rounded up to whole seconds, the Cache API's resolution). The Cache API
 * is local to each Cloudflare data center.
 */
export class CacheApiCacheStore {
  #cache
  #origin

  constructor(cache, origin) {
    this.#cache =
      cache === undefined || cache === null
        ? defaultCache()
        : checkBinding('CacheApiCacheStore', cache, 'cache', 'Cache', ['match', 'put', 'delete'])
    this.#origin = cacheOrigin(origin)
    countCalls(this, ['get', 'put', 'delete'], { cache: true })
  }

  #url(key) {
    return `${this.#origin}/${encodeURIComponent(key)}`
  }

  async get(key) {
    checkKey('CacheApiCacheStore', key)
    const hit = await this.#cache.match(this.#url(key))
    if (!hit) return null
    const envelope = readEnvelope(hit.headers.get(ENVELOPE_HEADER))
    if (!envelope) {
      // Not written by this store (or damaged): treat as a miss.
      await hit.body?.cancel()
      return null
    }
    const body = NULL_BODY_STATUSES.has(envelope.status) ? null : hit.body
    if (body === null) await hit.body?.cancel()
    return new Response(body, { status: envelope.status, headers: envelope.headers })
  }

  async put(key, response, ttlSeconds) {
    checkKey('CacheApiCacheStore', key)
    checkResponse(response)
    checkSeconds('CacheApiCacheStore', ttlSeconds, 'ttlSeconds')
    const maxAge = Math.ceil(ttlSeconds)
    if (maxAge === 0) {
      // Already expired: replacing with nothing is the same as deleting.
      await this.delete(key)
      return
    }
    const envelope = JSON.stringify({ status: response.status, headers: [...response.headers] })
    const stored = new Response(response.body, {
      status: 200,
      headers: { 'cache-control': `s-maxage=${maxAge}`, [ENVELOPE_HEADER]: asciiOnly(envelope) },
    })
    await this.#cache.put(this.#url(key), stored)
  }

  async delete(key) {
    checkKey('CacheApiCacheStore', key)
    return this.#cache.delete(this.#url(key))
  }
}

function defaultCache() {
  const cache = globalThis.caches?.default
  if (!cache) {
    throw new TypeError(
      'CacheApiCacheStore: no cache was given and caches.default is not available (not a Workers runtime?)',
    )
  }
  return cache
}

function cacheOrigin(origin) {
  if (origin === undefined || origin === null) return DEFAULT_CACHE_ORIGIN
  if (typeof origin !== 'string') {
    throw new TypeError(`CacheApiCacheStore: cacheOrigin must be a string, got ${describe(origin)}`)
  }
  let url
  try {
    url = new URL(origin)
  } catch {
    url = null
  }
  if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
    throw new RangeError(
      `CacheApiCacheStore: cacheOrigin must be an http(s) URL such as "https://cache.example", got ${describe(origin)}`,
    )
  }
  return url.origin
}

function checkResponse(value) {
  const ok =
    value !== null &&
    typeof value === 'object' &&
    typeof value.status === 'number' &&
    value.headers !== null &&
    typeof value.headers === 'object' &&
    typeof value.headers[Symbol.iterator] === 'function' &&
    'body' in value
  if (!ok) throw new TypeError(`CacheApiCacheStore: response must be a Response, got ${describe(value)}`)
}

// Header values are byte strings; escaping everything above ASCII keeps the
// envelope valid in any runtime and JSON.parse undoes it.
function asciiOnly(json) {
  return json.replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

function readEnvelope(text) {
  if (text === null) return null
  try {
    const { status, headers } = JSON.parse(text)
    return Number.isInteger(status) && Array.isArray(headers) ? { status, headers } : null
  } catch {
    return null
  }
}
