//! TLS to PostgreSQL: rustls through tokio-postgres-rustls, with the trust
//! and client certificate of the `tls` option ([`crate::tls`]) and, when
//! `tls.servername` is given, that name in place of the host's.
//!
//! tokio-postgres hands the TLS connector the host it is connecting to, and
//! rustls both sends it as SNI and checks the server's certificate against
//! it. [`Tls`] substitutes the configured name at exactly that point, as
//! Node's `tls.connect({ servername })` does: the certificate is still
//! checked, only against the name the user says the server carries (the
//! host may be an IP address or a name the certificate does not list).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{client_config, Trust};

/// What the `tls` option says beyond "on", as `lib/postgres.js` passes it.
pub struct Settings<'a> {
  pub trust: Trust<'a>,
  pub servername: Option<String>,
}

/// Makes TLS sessions for tokio-postgres (see the module docs).
#[derive(Clone)]
pub struct Tls {
  make: MakeRustlsConnect,
  servername: Option<String>,
}

impl Tls {
  /// Fails with a message naming the option at fault (`tls.ca`, `tls.key`,
  /// `tls.servername`, …).
  pub fn new(settings: Settings<'_>) -> Result<Self, String> {
    if let Some(name) = &settings.servername {
      crate::tls::server_name(name).map_err(|reason| format!("tls.servername: {reason}"))?;
    }
    let config = client_config(&settings.trust)?;
    Ok(Tls {
      make: MakeRustlsConnect::new((*config).clone()),
      servername: settings.servername,
    })
  }
}

impl<S> MakeTlsConnect<S> for Tls
where
  S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
  type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
  type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
  type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

  fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
    let name = self.servername.as_deref().unwrap_or(host);
    MakeTlsConnect::<S>::make_tls_connect(&mut self.make, name)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_servername_must_be_a_dns_name_or_an_ip_address() {
    let with_name = |name: &str| {
      Tls::new(Settings {
        trust: Trust::default(),
        servername: Some(name.to_string()),
      })
    };
    assert!(with_name("db.example.com").is_ok());
    assert!(with_name("127.0.0.1").is_ok());
    let reason = with_name("not a name!").err().unwrap();
    assert!(reason.starts_with("tls.servername: "), "{reason}");
  }

  #[test]
  fn a_bad_client_key_is_refused_naming_tls_key() {
    let cert =
      b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUAA==\n-----END CERTIFICATE-----\n";
    let reason = Tls::new(Settings {
      trust: Trust {
        cert: Some(cert),
        key: Some(b"not a key"),
        ..Trust::default()
      },
      servername: None,
    })
    .err()
    .unwrap();
    assert!(reason.starts_with("tls.key"), "{reason}");
  }
}
