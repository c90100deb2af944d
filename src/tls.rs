//! TLS client settings for the network stores (Redis `rediss://`, and
//! PostgreSQL with `sslmode=require`).
//!
//! Certificates are checked the way Node's `tls.connect` checks them: against
//! Mozilla's root certificates, or, when the user passes `ca`, against those
//! certificates only; the server's name must match. There is no switch to
//! turn checking off — a private CA is passed as `ca` instead.

use std::io::{self, Read, Write};
use std::sync::{Arc, LazyLock, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::errors::lock;

/// What a `tls` option says besides "on": the PEM certificates to trust
/// instead of Mozilla's roots, and a client certificate chain and its key
/// for servers that ask for one (mutual TLS).
#[derive(Default)]
pub struct Trust<'a> {
  pub ca: Option<&'a [u8]>,
  pub cert: Option<&'a [u8]>,
  pub key: Option<&'a [u8]>,
}

/// The client configuration `trust` asks for. Fails with a message naming
/// the option (`tls.ca`, `tls.cert`, `tls.key`) and what is wrong with it.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, String> {
  // Mozilla's ~150 roots are read once per process, not per adapter.
  static MOZILLA_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Arc::new(roots)
  });
  static WITH_MOZILLA_ROOTS: LazyLock<Result<Arc<ClientConfig>, String>> =
    LazyLock::new(|| config_trusting(Arc::clone(&MOZILLA_ROOTS), None));
  let roots = match trust.ca {
    None => Arc::clone(&MOZILLA_ROOTS),
    Some(pem) => {
      let mut roots = RootCertStore::empty();
      for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate =
          certificate.map_err(|error| format!("tls.ca is not PEM certificates: {error}"))?;
        roots
          .add(certificate)
          .map_err(|error| format!("tls.ca holds a certificate that cannot be used: {error}"))?;
      }
      if roots.is_empty() {
        return Err("tls.ca holds no PEM certificate".into());
      }
      Arc::new(roots)
    }
  };
  let identity = match (trust.cert, trust.key) {
    (None, None) => None,
    (Some(cert), Some(key)) => Some(identity(cert, key)?),
    (Some(_), None) => return Err("tls.cert needs tls.key, the certificate's private key".into()),
    (None, Some(_)) => return Err("tls.key needs tls.cert, the certificate it belongs to".into()),
  };
  if trust.ca.is_none() && identity.is_none() {
    return WITH_MOZILLA_ROOTS.clone();
  }
  config_trusting(roots, identity)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A client certificate chain and its private key, from PEM.
fn identity(cert: &[u8], key: &[u8]) -> Result<Identity, String> {
  let chain = CertificateDer::pem_slice_iter(cert)
    .collect::<Result<Vec<_>, _>>()
    .map_err(|error| format!("tls.cert is not PEM certificates: {error}"))?;
  if chain.is_empty() {
    return Err("tls.cert holds no PEM certificate".into());
  }
  let key = PrivateKeyDer::from_pem_slice(key)
    .map_err(|error| format!("tls.key is not a PEM private key: {error}"))?;
  Ok((chain, key))
}

fn config_trusting(
  roots: Arc<RootCertStore>,
  identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, String> {
  let provider = Arc::new(rustls::crypto::ring::default_provider());
  let builder = ClientConfig::builder_with_provider(provider)
    .with_safe_default_protocol_versions()
    .map_err(|error| error.to_string())?
    .with_root_certificates(roots);
  let config = match identity {
    None => builder.with_no_client_auth(),
    Some((chain, key)) => builder
      .with_client_auth_cert(chain, key)
      .map_err(|error| format!("tls.cert and tls.key cannot be used together: {error}"))?,
  };
  Ok(Arc::new(config))
}

/// `host` as the name the server's certificate must carry.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
  ServerName::try_from(host.to_owned())
    .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

/// A TLS session over a non-blocking TCP socket, read and written like the
/// socket itself: `WouldBlock` when there is nothing to read or no room to
/// write. Encrypted records that did not fit in the socket wait in the
/// session ([`wants_write`](Self::wants_write)) and go out with the next
/// write or [`flush`](Self::flush).
pub struct TlsSocket {
  pub tcp: std::net::TcpStream,
  session: Mutex<ClientConnection>,
}

impl TlsSocket {
  /// A session whose handshake is done, over its socket.
  pub fn new(tcp: std::net::TcpStream, session: ClientConnection) -> Self {
    TlsSocket {
      tcp,
      session: Mutex::new(session),
    }
  }

  pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
    let mut session = lock(&self.session);
    loop {
      match session.reader().read(buf) {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
        done => return done,
      }
      // No plaintext yet: take what the socket has (WouldBlock if nothing).
      if session.read_tls(&mut &self.tcp)? == 0 {
        return Ok(0);
      }
      session
        .process_new_packets()
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    }
  }

  pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
    let mut session = lock(&self.session);
    // Older records first; while they cannot go, take no more plaintext.
    send_records(&mut session, &self.tcp)?;
    let taken = session.writer().write(buf)?;
    match send_records(&mut session, &self.tcp) {
      Err(error) if error.kind() != io::ErrorKind::WouldBlock => Err(error),
      _ => Ok(taken),
    }
  }

  /// Sends the records waiting in the session (`WouldBlock` if some must
  /// still wait).
  pub fn flush(&self) -> io::Result<()> {
    send_records(&mut lock(&self.session), &self.tcp)
  }

  /// Records are waiting for room in the socket.
  pub fn wants_write(&self) -> bool {
    lock(&self.session).wants_write()
  }
}

fn send_records(session: &mut ClientConnection, mut tcp: &std::net::TcpStream) -> io::Result<()> {
  while session.wants_write() {
    session.write_tls(&mut tcp)?;
  }
  tcp.flush()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn trusts_mozillas_roots_by_default_and_refuses_a_ca_that_is_not_pem() {
    let ca = |pem: &'static [u8]| Trust {
      ca: Some(pem),
      ..Trust::default()
    };
    assert!(client_config(&Trust::default()).is_ok());
    assert_eq!(
      client_config(&ca(b"not a certificate")).err().unwrap(),
      "tls.ca holds no PEM certificate"
    );
    let broken = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    assert!(client_config(&ca(broken))
      .err()
      .unwrap()
      .starts_with("tls.ca is not PEM certificates"));
  }

  #[test]
  fn a_client_certificate_needs_its_key_and_both_must_be_pem() {
    let only_cert = Trust {
      cert: Some(b"x"),
      ..Trust::default()
    };
    assert!(client_config(&only_cert)
      .err()
      .unwrap()
      .starts_with("tls.cert needs tls.key"));
    let only_key = Trust {
      key: Some(b"x"),
      ..Trust::default()
    };
    assert!(client_config(&only_key)
      .err()
      .unwrap()
      .starts_with("tls.key needs tls.cert"));
    let garbage = Trust {
      cert: Some(b"not pem"),
      key: Some(b"not pem"),
      ..Trust::default()
    };
    assert_eq!(
      client_config(&garbage).err().unwrap(),
      "tls.cert holds no PEM certificate"
    );
  }

  #[test]
  fn server_names_are_dns_names_or_ip_addresses() {
    assert!(server_name("redis.example.com").is_ok());
    assert!(server_name("127.0.0.1").is_ok());
    assert!(server_name("bad name!").is_err());
  }
}
