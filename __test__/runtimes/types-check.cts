// The CommonJS view of the same declarations (require through `exports`).
import stoma = require('stoma-native')

const store: stoma.MemoryRateLimitStore = new stoma.MemoryRateLimitStore({ maxKeys: 10 })
export const counted: Promise<{ count: number; resetAt: number }> = store.increment('k', 60)
