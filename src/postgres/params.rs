//! Reading the connection string, as node-postgres's
//! `connection-parameters.js` does for `pg`: a `postgres://` URL or libpq's
//! `key=value` form, parsed by tokio-postgres, with TLS decided the way `pg`
//! decides it (only when the url or the `tls` option asks).

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::Config;

use super::pool::chain;

/// Parses a `postgres://` URL or `key=value` string. TLS is used as the
/// url's `sslmode` says; without one, as the `tls` option says (`require`)
/// or not at all — like node-postgres, not tokio-postgres's `prefer`.
pub fn parse_url(
  url: &str,
  connect_timeout: Duration,
  use_tls: bool,
) -> std::result::Result<Config, String> {
  let parse = |text: &str| {
    Config::from_str(text).map_err(|error| {
      let cause = chain(&error);
      let hint = if cause.contains("sslmode") {
        " (sslmode may be disable, prefer, require, verify-ca or verify-full)"
      } else {
        ""
      };
      format!("url is not a valid PostgreSQL connection string: {cause}{hint}")
    })
  };
  // libpq's verify-ca and verify-full are what `require` does here (rustls
  // always checks the certificate and the name); tokio-postgres knows only
  // the three weaker names, so those urls are read as `require`.
  let url = &match parse(url) {
    Err(_) if url.contains("sslmode=verify-") => url
      .replace("sslmode=verify-full", "sslmode=require")
      .replace("sslmode=verify-ca", "sslmode=require"),
    _ => url.to_owned(),
  };
  let mut config = parse(url)?;
  // Does the url set sslmode? Parsed again with another sslmode put first
  // (a later setting wins), it keeps its own either way.
  let mode_after =
    |mode| parse(&with_leading_sslmode(url, mode)).map(|config| config.get_ssl_mode());
  if mode_after("disable")? != mode_after("require")? {
    config.ssl_mode(if use_tls {
      SslMode::Require
    } else {
      SslMode::Disable
    });
  }
  if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
    return Err("url names no host".into());
  }
  config.connect_timeout(connect_timeout);
  if config.get_application_name().is_none() {
    config.application_name("stoma-native");
  }
  Ok(config)
}

/// `url` with `sslmode=<mode>` put before its own settings, where
/// tokio-postgres reads them: a URL's parameters start at the first `?`
/// after the credentials (which end at the first `@`).
fn with_leading_sslmode(url: &str, mode: &str) -> String {
  for scheme in ["postgres://", "postgresql://"] {
    if let Some(rest) = url.strip_prefix(scheme) {
      let after_credentials = rest.find('@').map_or(0, |at| at + 1);
      return match rest[after_credentials..].find('?') {
        Some(question) => {
          let params = after_credentials + question + 1;
          format!(
            "{scheme}{}sslmode={mode}&{}",
            &rest[..params],
            &rest[params..]
          )
        }
        None => format!("{url}?sslmode={mode}"),
      };
    }
  }
  format!("sslmode={mode} {url}")
}

#[cfg(test)]
mod tests {
  use super::*;

  fn mode(url: &str, use_tls: bool) -> SslMode {
    parse_url(url, Duration::from_secs(1), use_tls)
      .unwrap()
      .get_ssl_mode()
  }

  #[test]
  fn tls_only_when_the_url_or_the_option_asks() {
    assert_eq!(mode("postgres://h/db", false), SslMode::Disable);
    assert_eq!(mode("postgres://h/db", true), SslMode::Require);
    assert_eq!(mode("host=h dbname=db", true), SslMode::Require);
    assert_eq!(mode("postgres://h/db?", false), SslMode::Disable);
  }

  #[test]
  fn the_urls_own_sslmode_wins_however_it_is_written() {
    assert_eq!(
      mode("postgres://h/db?sslmode=prefer", false),
      SslMode::Prefer
    );
    assert_eq!(
      mode("postgres://h/db?sslmode=disable", true),
      SslMode::Disable
    );
    assert_eq!(
      mode(
        "postgresql://h/db?application_name=a&sslmode=require",
        false
      ),
      SslMode::Require
    );
    assert_eq!(mode("host=h sslmode = require", false), SslMode::Require);
    assert_eq!(mode("sslmode=disable host=h", true), SslMode::Disable);
    // "sslmode=" inside a password is not a setting.
    assert_eq!(
      mode("postgres://u:pw-sslmode=x@h/db", true),
      SslMode::Require
    );
    assert_eq!(
      mode("postgres://u:pw-sslmode=x@h/db?sslmode=prefer", true),
      SslMode::Prefer
    );
  }

  #[test]
  fn libpq_verify_modes_mean_require() {
    assert_eq!(
      mode("postgres://h/db?sslmode=verify-full", false),
      SslMode::Require
    );
    assert_eq!(mode("host=h sslmode=verify-ca", false), SslMode::Require);
  }

  #[test]
  fn an_unusable_url_says_why() {
    let reason = |url: &str| parse_url(url, Duration::from_secs(1), false).err().unwrap();
    let unknown_mode = reason("postgres://h/db?sslmode=strict");
    assert!(
      unknown_mode.contains("sslmode may be disable, prefer, require, verify-ca or verify-full"),
      "{unknown_mode}"
    );
    assert!(reason("postgres://h/db?ssl=true").contains("ssl"));
    assert!(reason("dbname=x").contains("url names no host"));
  }
}
