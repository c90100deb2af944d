//! The cache envelope: a response as Stoma's JS adapters store it.
//!
//! Redis keeps one JSON text per entry,
//! `{"status":200,"headers":[["name","value"],…],"body":"<base64>"}`;
//! PostgreSQL keeps the same pieces in columns (`status`, `headers` as JSONB,
//! `body` as base64 text). Encoding and decoding happen here, in Rust, so the
//! body crosses into JS once as bytes rather than through a per-byte loop.
//!
//! Decoding is total: anything that is not a well-formed envelope (invalid
//! JSON, wrong shapes, bad base64, a status a `Response` cannot carry, a
//! header a `Headers` would reject) yields `None`, which stores report as a
//! cache miss instead of throwing.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use serde_json::Value;

/// Standard base64 as `btoa` writes it; padding optional when reading.
const BASE64: GeneralPurpose = GeneralPurpose::new(
  &alphabet::STANDARD,
  GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A cached response: status, headers in order (duplicates kept), body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
  pub status: u16,
  pub headers: Vec<(String, String)>,
  pub body: Vec<u8>,
}

impl StoredResponse {
  /// Builds a response from the JS layer's parts: headers joined as
  /// `name\0value\0…` (see `lib/response.js`).
  pub fn from_joined(status: u16, joined_headers: &str, body: Vec<u8>) -> Self {
    let mut parts = joined_headers.split('\0');
    let mut headers = Vec::new();
    if !joined_headers.is_empty() {
      while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        headers.push((name.to_string(), value.to_string()));
      }
    }
    StoredResponse { status, headers, body }
  }

  /// The headers joined as `name\0value\0…`, for the JS layer.
  pub fn joined_headers(&self) -> String {
    let mut joined = String::new();
    for (i, (name, value)) in self.headers.iter().enumerate() {
      if i > 0 {
        joined.push('\0');
      }
      joined.push_str(name);
      joined.push('\0');
      joined.push_str(value);
    }
    joined
  }

  /// The headers as a JSON array of `[name, value]` pairs.
  pub fn headers_json(&self) -> Value {
    Value::Array(
      self
        .headers
        .iter()
        .map(|(n, v)| Value::Array(vec![Value::String(n.clone()), Value::String(v.clone())]))
        .collect(),
    )
  }

  pub fn body_base64(&self) -> String {
    BASE64.encode(&self.body)
  }

  /// The Redis envelope text. Written directly rather than through a JSON
  /// value: base64 needs no escaping, so the body is encoded straight into
  /// the output, once (a third of the time of building and serializing a
  /// `Value` for a 64 KiB body).
  pub fn to_envelope(&self) -> String {
    let headers = self.headers_json().to_string();
    let mut text = String::with_capacity(48 + headers.len() + self.body.len().div_ceil(3) * 4);
    text.push_str(r#"{"status":"#);
    text.push_str(&self.status.to_string());
    text.push_str(r#","headers":"#);
    text.push_str(&headers);
    text.push_str(r#","body":""#);
    BASE64.encode_string(&self.body, &mut text);
    text.push_str(r#""}"#);
    text
  }

  /// Reads a Redis envelope; `None` for anything malformed. The body is
  /// borrowed from `text` (base64 has nothing to unescape) and decoded once.
  pub fn from_envelope(text: &[u8]) -> Option<Self> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
      status: u64,
      #[serde(default)]
      headers: Value,
      /// Absent reads as empty; `null` or a non-string is malformed.
      #[serde(borrow, default = "empty_body")]
      body: Option<std::borrow::Cow<'a, str>>,
    }
    fn empty_body<'a>() -> Option<std::borrow::Cow<'a, str>> {
      Some("".into())
    }
    // Only an object is an envelope (serde would also take an array).
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
      return None;
    }
    let envelope: Envelope = serde_json::from_slice(text).ok()?;
    Self::from_columns(i64::try_from(envelope.status).ok()?, &envelope.headers, &envelope.body?)
  }

  /// Reads PostgreSQL's columns; `None` for anything malformed.
  pub fn from_columns(status: i64, headers: &Value, body_base64: &str) -> Option<Self> {
    let status = u16::try_from(status).ok().filter(|s| (200..=599).contains(s))?;
    let headers = parse_headers(headers)?;
    let body = BASE64.decode(body_base64.trim_end()).ok()?;
    Some(StoredResponse { status, headers, body })
  }
}

/// Header pairs from `[["name","value"],…]`, or from a `{name: value}`
/// object (which `new Response` also accepts); `null` means none.
fn parse_headers(value: &Value) -> Option<Vec<(String, String)>> {
  let pairs: Vec<(&str, &str)> = match value {
    Value::Null => Vec::new(),
    Value::Array(items) => items
      .iter()
      .map(|pair| match pair.as_array()?.as_slice() {
        [Value::String(name), Value::String(value)] => Some((name.as_str(), value.as_str())),
        _ => None,
      })
      .collect::<Option<_>>()?,
    Value::Object(map) => map
      .iter()
      .map(|(name, value)| Some((name.as_str(), value.as_str()?)))
      .collect::<Option<_>>()?,
    _ => return None,
  };
  pairs
    .into_iter()
    .map(|(name, value)| (is_token(name) && is_field_value(value)).then(|| (name.to_string(), value.to_string())))
    .collect()
}

/// An HTTP header name (RFC 9110 token).
fn is_token(name: &str) -> bool {
  !name.is_empty()
    && name
      .bytes()
      .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value `Headers` accepts: no NUL, CR or LF, and Latin-1 only.
fn is_field_value(value: &str) -> bool {
  value.chars().all(|c| c != '\0' && c != '\r' && c != '\n' && (c as u32) <= 0xFF)
}

#[cfg(test)]
mod tests {
  use super::*;

  fn sample() -> StoredResponse {
    StoredResponse::from_joined(201, "content-type\0text/plain\0set-cookie\0a=1\0set-cookie\0b=2", vec![0, 159, 255, 10])
  }

  #[test]
  fn round_trips_through_the_envelope() {
    let response = sample();
    let text = response.to_envelope();
    assert!(text.contains(r#""headers":[["content-type","text/plain"],["set-cookie","a=1"],["set-cookie","b=2"]]"#));
    assert!(text.contains(r#""body":"AJ//Cg==""#));
    assert_eq!(StoredResponse::from_envelope(text.as_bytes()), Some(response.clone()));
    assert_eq!(response.joined_headers(), "content-type\0text/plain\0set-cookie\0a=1\0set-cookie\0b=2");
  }

  #[test]
  fn reads_what_stomas_js_writes() {
    let js = br#"{"status":200,"headers":[["x-a","1"]],"body":"aGk="}"#;
    let response = StoredResponse::from_envelope(js).unwrap();
    assert_eq!((response.status, response.body.as_slice()), (200, &b"hi"[..]));
    let object_headers = br#"{"status":204,"headers":{"etag":"x"},"body":""}"#;
    assert_eq!(StoredResponse::from_envelope(object_headers).unwrap().headers, vec![("etag".into(), "x".into())]);
  }

  #[test]
  fn garbage_is_a_miss_not_an_error() {
    for garbage in [
      &b"not json"[..],
      b"[]",
      b"{}",
      br#"{"status":"200","headers":[],"body":""}"#,
      br#"{"status":99,"headers":[],"body":""}"#,
      br#"{"status":200,"headers":[["a"]],"body":""}"#,
      br#"{"status":200,"headers":[["bad name","v"]],"body":""}"#,
      br#"{"status":200,"headers":[["a","line\nbreak"]],"body":""}"#,
      br#"{"status":200,"headers":[],"body":"%%%"}"#,
      br#"{"status":200,"headers":[],"body":5}"#,
      b"\xff\xfe",
    ] {
      assert_eq!(StoredResponse::from_envelope(garbage), None, "{}", String::from_utf8_lossy(garbage));
    }
  }
}

