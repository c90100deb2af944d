// The TLS setup of the test server: Debian's clusters have TLS on with a
// self-signed certificate for the machine's name, which the TLS tests trust
// as their CA.
import { X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import pg from 'pg'

/**
 * The server's certificate (`ca`), the name it is valid for, and its
 * certificate and key files; null when the server has TLS off.
 */
export async function serverTls(databaseUrl) {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const { rows } = await client.query(
      "SELECT current_setting('ssl') AS ssl, current_setting('ssl_cert_file') AS cert, current_setting('ssl_key_file') AS key",
    )
    if (rows[0].ssl !== 'on') return null
    const ca = readFileSync(rows[0].cert, 'utf8')
    const name = new X509Certificate(ca).subjectAltName?.match(/DNS:([^,\s]+)/)?.[1]
    return name ? { ca, name, certFile: rows[0].cert, keyFile: rows[0].key } : null
  } finally {
    await client.end()
  }
}
