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

use std::borrow::Cow;

use serde_json::Value;

/// Standard base64 as `btoa` writes it. `base64-simd` picks SIMD code (AVX2,
/// SSE4.1, NEON) at run time: decoding a 64 KiB body took 110 µs with the
/// `base64` crate's scalar engine, the largest cost of a cache hit, and
/// takes about a tenth of that here.
const BASE64: base64_simd::Base64 = base64_simd::STANDARD;

/// Decodes base64 as `atob` reads it: padding may be left out, but padding
/// that is there must complete a 4-character group (`aGk==` is an error).
fn decode_base64(bytes: &[u8]) -> Option<Vec<u8>> {
  let unpadded = if bytes.ends_with(b"=") {
    if !bytes.len().is_multiple_of(4) {
      return None;
    }
    bytes
      .strip_suffix(b"==")
      .or_else(|| bytes.strip_suffix(b"="))
      .unwrap_or(bytes)
  } else {
    bytes
  };
  base64_simd::STANDARD_NO_PAD.decode_to_vec(unpadded).ok()
}

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
    StoredResponse {
      status,
      headers,
      body,
    }
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
    BASE64.encode_to_string(&self.body)
  }

  /// The Redis envelope text. Written directly rather than through a JSON
  /// value: base64 needs no escaping, so the body is encoded straight into
  /// the output, once (a third of the time of building and serializing a
  /// `Value` for a 64 KiB body).
  pub fn to_envelope(&self) -> String {
    let text = envelope_bytes(self.status, &self.headers_json().to_string(), &self.body);
    // SAFETY: JSON text and base64 are ASCII or came from `String`s.
    unsafe { String::from_utf8_unchecked(text) }
  }

  /// The Redis envelope of the JS layer's parts (see [`from_joined`](Self::from_joined)),
  /// made without copying `body` first.
  pub fn envelope_of_joined(status: u16, joined_headers: &str, body: &[u8]) -> Vec<u8> {
    let headers = StoredResponse::from_joined(status, joined_headers, Vec::new())
      .headers_json()
      .to_string();
    envelope_bytes(status, &headers, body)
  }

  /// Reads a Redis envelope; `None` for anything malformed.
  ///
  /// The body is by far the largest part, and needs no JSON work: base64
  /// has nothing to escape. So the body string is cut out first (see
  /// [`splice_body`]) and only the rest goes through serde_json, which
  /// otherwise scanned every byte of the body for escapes and checked it
  /// as UTF-8 (40 µs of a 64 KiB hit) before base64 looked at it again.
  pub fn from_envelope(text: &[u8]) -> Option<Self> {
    // Only an object is an envelope (serde would also take an array).
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
      return None;
    }
    if let Some(spliced) = splice_body(text) {
      let envelope = parse_envelope(&spliced.rest)?;
      return match envelope.body {
        // The top-level body is the string that was cut out (not, say, a
        // "body" key nested in the headers): decode the original.
        // Trailing whitespace (trimmed, if JSON allows it there) takes the
        // slow path.
        Some(Body(Cow::Borrowed(empty)))
          if empty.is_empty()
            && empty.as_ptr() == spliced.rest[spliced.at..].as_ptr()
            && !spliced.body.last().is_some_and(u8::is_ascii_whitespace) =>
        {
          Self::from_parts(envelope.status, &envelope.headers, spliced.body)
        }
        _ => {
          let full = parse_envelope(text)?;
          Self::from_parts(
            full.status,
            &full.headers,
            full.body?.0.trim_end().as_bytes(),
          )
        }
      };
    }
    let envelope = parse_envelope(text)?;
    Self::from_parts(
      envelope.status,
      &envelope.headers,
      envelope.body?.0.trim_end().as_bytes(),
    )
  }

  /// `body_base64` is trimmed already. A body that is not UTF-8 is not
  /// base64 either, so it needs no check of its own.
  fn from_parts(status: u64, headers: &Value, body_base64: &[u8]) -> Option<Self> {
    let status = u16::try_from(status)
      .ok()
      .filter(|s| (200..=599).contains(s))?;
    let headers = parse_headers(headers)?;
    let body = decode_base64(body_base64)?;
    Some(StoredResponse {
      status,
      headers,
      body,
    })
  }

  /// Reads PostgreSQL's columns; `None` for anything malformed.
  pub fn from_columns(status: i64, headers: &Value, body_base64: &str) -> Option<Self> {
    Self::from_parts(
      u64::try_from(status).ok()?,
      headers,
      body_base64.trim_end().as_bytes(),
    )
  }
}

/// `{"status":…,"headers":…,"body":"<base64>"}`, in Stoma's field order.
fn envelope_bytes(status: u16, headers_json: &str, body: &[u8]) -> Vec<u8> {
  let mut text = Vec::with_capacity(48 + headers_json.len() + BASE64.encoded_length(body.len()));
  text.extend_from_slice(br#"{"status":"#);
  text.extend_from_slice(status.to_string().as_bytes());
  text.extend_from_slice(br#","headers":"#);
  text.extend_from_slice(headers_json.as_bytes());
  text.extend_from_slice(br#","body":""#);
  BASE64.encode_append(body, &mut text);
  text.extend_from_slice(br#""}"#);
  text
}

/// The envelope's fields as serde reads them.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
  status: u64,
  #[serde(default)]
  headers: Value,
  /// Absent reads as empty; `null` or a non-string is malformed.
  #[serde(borrow, default = "empty_body")]
  body: Option<Body<'a>>,
}

/// A JSON string, borrowed from the text unless it has escapes. (serde
/// borrows a `Cow<str>` only as a field of its own, not inside an `Option`.)
#[derive(serde::Deserialize)]
struct Body<'a>(#[serde(borrow)] Cow<'a, str>);

fn empty_body<'a>() -> Option<Body<'a>> {
  Some(Body("".into()))
}

fn parse_envelope(text: &[u8]) -> Option<Envelope<'_>> {
  serde_json::from_slice(text).ok()
}

/// An envelope with its body string cut out: `rest` is the text with that
/// string emptied (`"body":""`, its content starting at `rest[at..]`), and
/// `body` the content cut out.
struct Spliced<'a> {
  rest: Vec<u8>,
  at: usize,
  body: &'a [u8],
}

/// Cuts the content of the first `"body":"…"` string out of `text`, if it
/// has no backslash (base64 never has one; an escape needs serde's reading).
///
/// Emptying a string's content keeps JSON valid or invalid as it was, and
/// keeps every other value, so parsing `rest` reads the same envelope but
/// for the body. `"body":"` with its quotes unescaped can only be a key
/// and the start of its string value, which ends at the next quote; whether
/// it is the top-level key the caller checks on the parsed result.
fn splice_body(text: &[u8]) -> Option<Spliced<'_>> {
  const KEY: &[u8] = br#""body":""#;
  let start = memchr::memmem::find(text, KEY)? + KEY.len();
  let length = memchr::memchr2(b'"', b'\\', &text[start..])?;
  if text[start + length] != b'"' {
    return None;
  }
  let mut rest = Vec::with_capacity(text.len() - length);
  rest.extend_from_slice(&text[..start]);
  rest.extend_from_slice(&text[start + length..]);
  Some(Spliced {
    rest,
    at: start,
    body: &text[start..start + length],
  })
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
    .map(|(name, value)| {
      (is_token(name) && is_field_value(value)).then(|| (name.to_string(), value.to_string()))
    })
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
  value
    .chars()
    .all(|c| c != '\0' && c != '\r' && c != '\n' && (c as u32) <= 0xFF)
}

#[cfg(test)]
mod tests {
  use super::*;

  fn sample() -> StoredResponse {
    StoredResponse::from_joined(
      201,
      "content-type\0text/plain\0set-cookie\0a=1\0set-cookie\0b=2",
      vec![0, 159, 255, 10],
    )
  }

  #[test]
  fn round_trips_through_the_envelope() {
    let response = sample();
    let text = response.to_envelope();
    assert!(text.contains(
      r#""headers":[["content-type","text/plain"],["set-cookie","a=1"],["set-cookie","b=2"]]"#
    ));
    assert!(text.contains(r#""body":"AJ//Cg==""#));
    assert_eq!(
      StoredResponse::from_envelope(text.as_bytes()),
      Some(response.clone())
    );
    let joined =
      StoredResponse::envelope_of_joined(201, &response.joined_headers(), &response.body);
    assert_eq!(joined, text.as_bytes());
    assert_eq!(
      response.joined_headers(),
      "content-type\0text/plain\0set-cookie\0a=1\0set-cookie\0b=2"
    );
  }

  #[test]
  fn reads_what_stomas_js_writes() {
    let js = br#"{"status":200,"headers":[["x-a","1"]],"body":"aGk="}"#;
    let response = StoredResponse::from_envelope(js).unwrap();
    assert_eq!(
      (response.status, response.body.as_slice()),
      (200, &b"hi"[..])
    );
    let object_headers = br#"{"status":204,"headers":{"etag":"x"},"body":""}"#;
    assert_eq!(
      StoredResponse::from_envelope(object_headers)
        .unwrap()
        .headers,
      vec![("etag".into(), "x".into())]
    );
    // Escapes, padding left out, trailing spaces, a nested "body" key and
    // the body not last all read as JSON says.
    for (text, body) in [
      (
        &br#"{"status":200,"headers":[],"body":"a\u0047k="}"#[..],
        &b"hi"[..],
      ),
      (br#"{"status":200,"headers":[],"body":"aGk"}"#, b"hi"),
      (br#"{"status":200,"headers":[],"body":"aGk= "}"#, b"hi"),
      (br#"{"status":200,"headers":[],"body":"aGk=\n"}"#, b"hi"),
      (br#"{"status":200,"body":"aGk=","headers":[]}"#, b"hi"),
      (br#"{"status":200,"headers":{"body":"aGk="}}"#, b""),
      (
        br#"{"status":200,"headers":{"x":"\"body\":\"QQ=="},"body":"aGk="}"#,
        b"hi",
      ),
      (
        br#"{"body":"aGk=","status":200,"headers":[["x-body","\"body\":\"QQ=="]]} "#,
        b"hi",
      ),
    ] {
      let response = StoredResponse::from_envelope(text)
        .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(text)));
      assert_eq!(response.body, body, "{}", String::from_utf8_lossy(text));
    }
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
      b"{\"status\":200,\"headers\":[],\"body\":\"aGk=\n\"}",
      br#"{"status":200,"headers":[],"body":"aGk=","body":"aGk="}"#,
      br#"{"status":200,"headers":[],"body":"aGk="]"#,
      br#"{"status":200,"headers":[],"body":"aGk===="}"#,
      b"\xff\xfe",
    ] {
      assert_eq!(
        StoredResponse::from_envelope(garbage),
        None,
        "{}",
        String::from_utf8_lossy(garbage)
      );
    }
  }

  /// Replays the checked-in seed corpus (`__test__/fixtures/fuzz-corpus/envelope/`): files named
  /// `hit-*` must decode and survive a round trip, `miss-*` must read as a miss.
  #[test]
  fn the_seed_corpus_decodes_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
      .join("__test__/fixtures/fuzz-corpus/envelope");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the envelope corpus exists") {
      let path = entry.unwrap().path();
      let name = path.file_name().unwrap().to_string_lossy().into_owned();
      let bytes = std::fs::read(&path).unwrap();
      let decoded = StoredResponse::from_envelope(&bytes);
      if name.starts_with("hit-") {
        let response = decoded.unwrap_or_else(|| panic!("{name} should decode"));
        assert_eq!(
          StoredResponse::from_envelope(response.to_envelope().as_bytes()),
          Some(response),
          "{name}"
        );
      } else if name.starts_with("miss-") {
        assert_eq!(decoded, None, "{name} should read as a miss");
      } else {
        continue;
      }
      seen += 1;
    }
    assert!(seen >= 10, "only {seen} corpus files");
  }
}

/// Property-based fuzzing of the decoders (stable Rust: proptest rather than
/// cargo-fuzz). Case counts are bounded so `cargo test --release` runs each in
/// well under a second; failures are persisted to `proptest-regressions/`
/// and replayed first on every later run.
#[cfg(test)]
mod fuzz {
  use super::*;
  use proptest::prelude::*;

  fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
      cases,
      max_shrink_iters: 2_000,
      ..ProptestConfig::default()
    }
  }

  /// Arbitrary JSON values, biased towards envelope-like shapes.
  fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
      Just(Value::Null),
      any::<bool>().prop_map(Value::Bool),
      any::<i64>().prop_map(Value::from),
      any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
      (100u64..700).prop_map(Value::from),
      ".{0,12}".prop_map(Value::String),
      "[A-Za-z0-9+/=%]{0,16}".prop_map(Value::String),
      prop_oneof![
        Just("status"),
        Just("headers"),
        Just("body"),
        Just("content-type")
      ]
      .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
      prop_oneof![
        prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
        prop::collection::vec(
          (
            prop_oneof![
              Just("status".to_string()),
              Just("headers".to_string()),
              Just("body".to_string()),
              ".{0,6}".prop_map(String::from)
            ],
            inner
          ),
          0..5
        )
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
      ]
    })
  }

  /// Envelope-shaped objects whose fields are each right or wrong.
  fn envelope_like() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![(0i64..1000).prop_map(Value::from), json()];
    let header = prop_oneof![
      ("[a-z-]{1,10}", "[ -~]{0,20}").prop_map(|(n, v)| serde_json::json!([n, v])),
      (".{0,8}", ".{0,8}").prop_map(|(n, v)| serde_json::json!([n, v])),
      json(),
    ];
    let headers = prop_oneof![
      prop::collection::vec(header, 0..6).prop_map(Value::Array),
      json()
    ];
    let body = prop_oneof![
      prop::collection::vec(any::<u8>(), 0..64)
        .prop_map(|b| Value::String(BASE64.encode_to_string(&b))),
      json()
    ];
    (status, headers, body, any::<bool>()).prop_map(|(status, headers, body, trailing)| {
      let mut text =
        serde_json::json!({ "status": status, "headers": headers, "body": body }).to_string();
      if trailing {
        text.push('\n');
      }
      text.into_bytes()
    })
  }

  /// Responses a `Response` could carry: valid statuses, token names,
  /// Latin-1 values without NUL/CR/LF, any body.
  fn response() -> impl Strategy<Value = StoredResponse> {
    let name = "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}";
    let value = prop::collection::vec(prop_oneof![0x20u8..0x7f, 0xa0u8..=0xff, Just(b'\t')], 0..24)
      .prop_map(|bytes| bytes.into_iter().map(char::from).collect::<String>());
    (
      200u16..=599,
      prop::collection::vec((name, value), 0..8),
      prop::collection::vec(any::<u8>(), 0..256),
    )
      .prop_map(|(status, headers, body)| StoredResponse {
        status,
        headers,
        body,
      })
  }

  /// What every successful decode must satisfy.
  fn check_decoded(response: &StoredResponse) -> Result<(), TestCaseError> {
    prop_assert!((200..=599).contains(&response.status));
    for (name, value) in &response.headers {
      prop_assert!(
        is_token(name) && is_field_value(value),
        "{name:?}: {value:?}"
      );
    }
    let again = StoredResponse::from_envelope(response.to_envelope().as_bytes());
    prop_assert_eq!(again.as_ref(), Some(response));
    Ok(())
  }

  proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn from_envelope_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
      if let Some(response) = StoredResponse::from_envelope(&bytes) {
        check_decoded(&response)?;
      }
    }

    #[test]
    fn from_envelope_never_panics_on_json(value in json()) {
      if let Some(response) = StoredResponse::from_envelope(value.to_string().as_bytes()) {
        check_decoded(&response)?;
      }
    }

    #[test]
    fn from_envelope_sorts_envelope_like_text(text in envelope_like()) {
      if let Some(response) = StoredResponse::from_envelope(&text) {
        check_decoded(&response)?;
      }
    }

    #[test]
    fn from_columns_never_panics(status in any::<i64>(), headers in json(), body in prop_oneof![".{0,40}", "[A-Za-z0-9+/]{0,40}={0,3}[ \n]{0,2}"]) {
      if let Some(response) = StoredResponse::from_columns(status, &headers, &body) {
        check_decoded(&response)?;
      }
    }

    #[test]
    fn envelopes_round_trip(response in response()) {
      let text = response.to_envelope();
      prop_assert_eq!(StoredResponse::from_envelope(text.as_bytes()), Some(response.clone()));
      let headers = response.headers_json();
      prop_assert_eq!(StoredResponse::from_columns(response.status.into(), &headers, &response.body_base64()), Some(response.clone()));
      let joined = StoredResponse::from_joined(response.status, &response.joined_headers(), response.body.clone());
      prop_assert_eq!(joined, response);
    }

    #[test]
    fn one_flipped_byte_never_panics(response in response(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
      let mut text = response.to_envelope().into_bytes();
      let i = at.index(text.len());
      text[i] = byte;
      if let Some(decoded) = StoredResponse::from_envelope(&text) {
        check_decoded(&decoded)?;
      }
    }

    #[test]
    fn from_joined_never_panics(joined in ".{0,64}", body in prop::collection::vec(any::<u8>(), 0..16)) {
      let response = StoredResponse::from_joined(200, &joined, body);
      let _ = response.to_envelope();
      let _ = response.joined_headers();
    }
  }
}
