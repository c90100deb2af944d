// Carries store arguments and results between Node (the tests) and workerd
// (the stores) as JSON, keeping what JSON alone would lose: NaN/Infinity,
// undefined, Responses (status, headers, body bytes or null) and errors.
// Imported by both the spec and the worker under test.

function toBase64(bytes) {
  let binary = ''
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  return btoa(binary)
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0))
}

export async function encode(value) {
  if (value === undefined) return { $: 'undefined' }
  if (typeof value === 'number' && !Number.isFinite(value)) return { $: 'number', value: String(value) }
  if (value instanceof Response) {
    const body = value.body === null ? null : toBase64(new Uint8Array(await value.arrayBuffer()))
    return { $: 'response', status: value.status, headers: [...value.headers], body }
  }
  if (value instanceof Error) return { $: 'error', name: value.name, message: value.message }
  if (Array.isArray(value)) return Promise.all(value.map(encode))
  if (value !== null && typeof value === 'object') {
    const entries = await Promise.all(Object.entries(value).map(async ([k, v]) => [k, await encode(v)]))
    return Object.fromEntries(entries)
  }
  return value
}

const ERROR_CLASSES = { TypeError, RangeError }

export function decode(value) {
  if (Array.isArray(value)) return value.map(decode)
  if (value === null || typeof value !== 'object') return value
  switch (value.$) {
    case 'undefined':
      return undefined
    case 'number':
      return Number(value.value)
    case 'response':
      return new Response(value.body === null ? null : fromBase64(value.body), {
        status: value.status,
        headers: value.headers,
      })
    case 'error': {
      const error = new (ERROR_CLASSES[value.name] ?? Error)(value.message)
      return error
    }
    default:
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, decode(v)]))
  }
}
