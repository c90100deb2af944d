'use strict'
// A client's TLS settings (Node's `tls.connect()` names: pg's `ssl`,
// postgres.js's `ssl`, ioredis's `tls`, node-redis's `socket`) as our `tls`
// option, for redis-client.js and postgres-client.js alike. We always check
// the server's certificate and name, so what would weaken or bypass those
// checks is refused rather than dropped; so is what we cannot read. Tuning
// such as `minVersion` or `ciphers` is left to rustls's safe defaults.

/** `settings` (an object) as `true` or `{ ca, cert, key, servername }`; `field` names it in messages. */
function clientTls(who, settings, field) {
  const beside = `beside client (tls replaces the client's ${field} settings)`
  if (settings.rejectUnauthorized === false) {
    throw new TypeError(
      `${who}: the client's ${field}.rejectUnauthorized is false, which turns certificate checking off; ` +
        `stoma-native always checks the server's certificate and name: pass the server's CA as tls: { ca } ${beside}`,
    )
  }
  if (settings.checkServerIdentity !== undefined) {
    throw new TypeError(
      `${who}: the client's ${field}.checkServerIdentity cannot be honoured: stoma-native always checks the server's name; ` +
        `pass the name to check as tls: { servername } ${beside}`,
    )
  }
  for (const name of ['pfx', 'passphrase', 'secureContext']) {
    if (settings[name] !== undefined) {
      throw new TypeError(
        `${who}: the client's ${field}.${name} cannot be read; pass tls: { ca, cert, key } (PEM, the key unencrypted) ${beside}`,
      )
    }
  }
  const picked = {}
  // pg keeps ssl.key non-enumerable, so each field is read by name.
  for (const name of ['ca', 'cert', 'key', 'servername']) {
    if (settings[name] !== undefined && settings[name] !== null) picked[name] = settings[name]
  }
  return Object.keys(picked).length === 0 ? true : picked
}

module.exports = { clientTls }
