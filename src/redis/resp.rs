//! Where one RESP reply ends in the bytes read from Redis so far, and what
//! it says.
//!
//! Replies arrive in pieces of whatever size the socket hands over. Before a
//! reply is decoded ([`decode`]) we need to know that all of it is here, and for a large one how many bytes to make room for.
//! Scanning the headers is enough: a bulk string's length says how far to
//! skip, so a reply costs a few steps however large its payload.

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
  /// A whole reply, this many bytes long.
  Complete(usize),
  /// Only part of one; the whole reply is at least this many bytes long.
  Partial(usize),
}

/// The buffer is not RESP: the connection is out of step and must be dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Scans the reply at the start of `buf`.
pub fn scan(buf: &[u8]) -> Result<Scan, ProtocolError> {
  let mut at = 0;
  // Values still to read: the reply itself, then the elements of every
  // aggregate met on the way.
  let mut remaining: u64 = 1;
  while remaining > 0 {
    let Some(line_end) = find_crlf(buf, at) else {
      return Ok(Scan::Partial(buf.len() + 1));
    };
    if line_end == at {
      return Err(ProtocolError("empty reply line".into()));
    }
    let kind = buf[at];
    let header = &buf[at + 1..line_end];
    at = line_end + 2;
    remaining -= 1;
    match kind {
      // Simple string, error, integer; RESP3 null, double, boolean, big number.
      b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
      // Bulk string (or RESP3 blob error, verbatim string): length, bytes, CRLF.
      b'$' | b'!' | b'=' => {
        let length = number(header)?;
        if length >= 0 {
          let end = at + length as usize + 2;
          if buf.len() < end {
            return Ok(Scan::Partial(end));
          }
          at = end;
        }
      }
      // Array (or RESP3 set, push): that many values follow.
      b'*' | b'~' | b'>' => remaining += number(header)?.max(0) as u64,
      // RESP3 map: twice that many; attributes, then the value they describe.
      b'%' => remaining += 2 * number(header)?.max(0) as u64,
      b'|' => remaining += 2 * number(header)?.max(0) as u64 + 1,
      other => {
        return Err(ProtocolError(format!(
          "unexpected reply type byte 0x{other:02x}"
        )))
      }
    }
  }
  Ok(Scan::Complete(at))
}

/// A whole reply's bytes (as [`scan`] delimits them) as a value. The
/// replies the stores live on — integers, bulk strings (a cache envelope can
/// be megabytes) and arrays of those — are read here directly; the rest
/// (errors, statuses, RESP3 types) go through the `redis` crate's parser,
/// whose generality cost ~5% of a busy JS thread on every reply.
pub fn decode(frame: &[u8]) -> ::redis::RedisResult<::redis::Value> {
  match decode_common(frame, &mut 0) {
    Some(value) => Ok(value),
    None => ::redis::parse_redis_value(frame),
  }
}

/// The value at `*at` if it is an integer, a bulk string, nil, `+OK` or an
/// array of those, moving `*at` past it; `None` for anything else.
fn decode_common(frame: &[u8], at: &mut usize) -> Option<::redis::Value> {
  use ::redis::Value;
  let line_end = find_crlf(frame, *at)?;
  let header = &frame[*at + 1..line_end];
  let kind = frame[*at];
  *at = line_end + 2;
  Some(match kind {
    b':' => Value::Int(std::str::from_utf8(header).ok()?.parse().ok()?),
    b'+' if header == b"OK" => Value::Okay,
    // RESP3's null (a near cache's connections speak RESP3).
    b'_' if header.is_empty() => Value::Nil,
    b'$' => match number(header).ok()? {
      -1 => Value::Nil,
      length => {
        let (start, end) = (*at, *at + length as usize);
        if frame.get(end..end + 2)? != b"\r\n" {
          return None; // out of step: let the crate's parser say so
        }
        *at = end + 2;
        Value::BulkString(frame[start..end].to_vec())
      }
    },
    b'*' => match number(header).ok()? {
      -1 => Value::Nil,
      length => Value::Array(
        (0..length)
          .map(|_| decode_common(frame, at))
          .collect::<Option<_>>()?,
      ),
    },
    _ => return None,
  })
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
  let line = buf.get(from..)?;
  line
    .windows(2)
    .position(|pair| pair == b"\r\n")
    .map(|cr| from + cr)
}

/// A header's decimal number, bounded so lengths cannot overflow.
fn number(digits: &[u8]) -> Result<i64, ProtocolError> {
  std::str::from_utf8(digits)
    .ok()
    .and_then(|text| text.parse::<i64>().ok())
    .filter(|n| (-1..=1 << 40).contains(n))
    .ok_or_else(|| ProtocolError(format!("bad length {:?}", String::from_utf8_lossy(digits))))
}

#[cfg(test)]
mod tests {
  use super::*;
  use proptest::prelude::*;

  #[test]
  fn whole_replies_of_every_kind() {
    for reply in [
      &b"+OK\r\n"[..],
      b"-ERR no\r\n",
      b":42\r\n",
      b"$-1\r\n",
      b"$3\r\nabc\r\n",
      b"$0\r\n\r\n",
      b"*-1\r\n",
      b"*0\r\n",
      b"*2\r\n:1\r\n$2\r\nhi\r\n",
      b"*2\r\n*1\r\n:1\r\n$1\r\n\r\r\n",
    ] {
      assert_eq!(
        scan(reply),
        Ok(Scan::Complete(reply.len())),
        "{:?}",
        String::from_utf8_lossy(reply)
      );
      let mut two = reply.to_vec();
      two.extend_from_slice(b":7\r\n");
      assert_eq!(scan(&two), Ok(Scan::Complete(reply.len())));
    }
  }

  #[test]
  fn every_prefix_of_a_reply_is_partial() {
    let reply = b"*3\r\n:1\r\n$5\r\nhello\r\n*1\r\n+OK\r\n";
    for cut in 0..reply.len() {
      assert!(
        matches!(scan(&reply[..cut]), Ok(Scan::Partial(_))),
        "cut at {cut}"
      );
    }
  }

  #[test]
  fn a_large_bulk_says_how_much_room_it_needs() {
    assert_eq!(
      scan(b"$1000000\r\nabc"),
      Ok(Scan::Partial(10 + 1_000_000 + 2))
    );
  }

  #[test]
  fn decodes_as_the_redis_crate_does() {
    use ::redis::Value;
    assert_eq!(
      decode(b"$3\r\nabc\r\n").unwrap(),
      Value::BulkString(b"abc".to_vec())
    );
    assert_eq!(
      decode(b"$0\r\n\r\n").unwrap(),
      Value::BulkString(Vec::new())
    );
    assert_eq!(decode(b"$-1\r\n").unwrap(), Value::Nil);
    assert_eq!(decode(b":5\r\n").unwrap(), Value::Int(5));
    for reply in [
      &b":-12\r\n"[..],
      b"+OK\r\n",
      b"+QUEUED\r\n",
      b"-NOSCRIPT No matching script\r\n",
      b"*-1\r\n",
      b"*0\r\n",
      b"*2\r\n:7\r\n:1764000000000\r\n",
      b"*5\r\n$6\r\nclosed\r\n:1\r\n:0\r\n:0\r\n:5\r\n",
      b"*2\r\n*1\r\n$-1\r\n$2\r\n\r\n\r\n",
      b"*2\r\n:1\r\n-ERR inside\r\n",
    ] {
      let ours = format!("{:?}", decode(reply));
      assert_eq!(
        ours,
        format!("{:?}", ::redis::parse_redis_value(reply)),
        "{:?}",
        String::from_utf8_lossy(reply)
      );
    }
  }

  /// RESP text for a reply tree: leaves are integers, bulk strings, nil,
  /// simple strings and errors.
  fn resp_reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
      any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
      proptest::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| {
        let mut out = format!("${}\r\n", bytes.len()).into_bytes();
        out.extend(bytes);
        out.extend(b"\r\n");
        out
      }),
      Just(b"$-1\r\n".to_vec()),
      Just(b"+OK\r\n".to_vec()),
      "[a-zA-Z ]{0,12}".prop_map(|text| format!("+{text}\r\n").into_bytes()),
      "[A-Z]{1,8} [a-z ]{0,12}".prop_map(|text| format!("-{text}\r\n").into_bytes()),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
      proptest::collection::vec(inner, 0..6).prop_map(|items| {
        let mut out = format!("*{}\r\n", items.len()).into_bytes();
        out.extend(items.concat());
        out
      })
    })
  }

  proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever `scan` calls one whole reply — well formed, or with a byte
    /// changed — decodes exactly as the redis crate decodes it.
    #[test]
    fn decodes_every_frame_as_the_redis_crate_does(
      reply in resp_reply(),
      corrupt in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
      let mut bytes = reply;
      if let Some((at, byte)) = corrupt {
        let at = at.index(bytes.len());
        bytes[at] = byte;
      }
      if let Ok(Scan::Complete(length)) = scan(&bytes) {
        let frame = &bytes[..length];
        prop_assert_eq!(format!("{:?}", decode(frame)), format!("{:?}", ::redis::parse_redis_value(frame)));
      }
    }
  }

  #[test]
  fn garbage_is_a_protocol_error() {
    assert!(scan(b"hello\r\n").is_err());
    assert!(scan(b"$abc\r\n").is_err());
    assert!(scan(b"$99999999999999999\r\n").is_err());
  }
}
