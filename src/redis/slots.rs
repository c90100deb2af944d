//! Redis Cluster's key space: the hash slot of a key, and the slot map a
//! node describes with `CLUSTER SLOTS`.

use ::redis::Value;

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag —
/// the part between the first `{` and the next `}`, when not empty — modulo
/// 16384. Keys with the same tag share a slot.
pub fn key_slot(key: &[u8]) -> u16 {
  let hashed = match key.iter().position(|&b| b == b'{') {
    Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
      Some(length) if length > 0 => &key[open + 1..open + 1 + length],
      _ => key,
    },
    None => key,
  };
  crc16(hashed) % SLOTS as u16
}

/// CRC16/XMODEM (polynomial 0x1021, initial 0), as Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
  static TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
      let mut crc = (i as u16) << 8;
      let mut bit = 0;
      while bit < 8 {
        crc = if crc & 0x8000 != 0 {
          (crc << 1) ^ 0x1021
        } else {
          crc << 1
        };
        bit += 1;
      }
      table[i] = crc;
      i += 1;
    }
    table
  };
  bytes.iter().fold(0u16, |crc, &byte| {
    (crc << 8) ^ TABLE[(((crc >> 8) as u8) ^ byte) as usize]
  })
}

/// A node's address as the cluster names it: `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
  pub host: String,
  pub port: u16,
}

impl Node {
  /// Reads `host:port` (the form of MOVED and ASK answers).
  pub fn parse(address: &str) -> Option<Node> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Node {
      host: host.to_owned(),
      port: port.parse().ok()?,
    })
  }
}

impl std::fmt::Display for Node {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "{}:{}", self.host, self.port)
  }
}

/// A range of slots and the primary serving it.
#[derive(Debug, PartialEq, Eq)]
pub struct Range {
  pub first: u16,
  pub last: u16,
  pub primary: Node,
}

/// The ranges of a `CLUSTER SLOTS` answer from the node at `asked_host`
/// (a primary's empty host means that node's own). Replicas are not used:
/// every store operation writes, so every call goes to a primary.
pub fn parse_cluster_slots(answer: Value, asked_host: &str) -> Result<Vec<Range>, String> {
  let malformed = || "malformed CLUSTER SLOTS answer".to_string();
  let Value::Array(entries) = answer else {
    return Err(match answer.extract_error() {
      Err(error) => error.to_string(),
      Ok(_) => malformed(),
    });
  };
  let mut ranges = Vec::with_capacity(entries.len());
  for entry in entries {
    let Value::Array(fields) = entry else {
      return Err(malformed());
    };
    let [Value::Int(first), Value::Int(last), Value::Array(primary), ..] = fields.as_slice() else {
      return Err(malformed());
    };
    let (host, port) = match primary.as_slice() {
      [Value::BulkString(host), Value::Int(port), ..] => {
        (String::from_utf8_lossy(host).into_owned(), *port)
      }
      [Value::SimpleString(host), Value::Int(port), ..] => (host.clone(), *port),
      _ => return Err(malformed()),
    };
    let in_range = |n: i64| (0..SLOTS as i64).contains(&n);
    if !in_range(*first) || !in_range(*last) || first > last || !(1..=65_535).contains(&port) {
      return Err(malformed());
    }
    // "?" is a node whose address the answering node does not know yet.
    if host == "?" {
      continue;
    }
    let host = if host.is_empty() {
      asked_host.to_owned()
    } else {
      host
    };
    ranges.push(Range {
      first: *first as u16,
      last: *last as u16,
      primary: Node {
        host,
        port: port as u16,
      },
    });
  }
  Ok(ranges)
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::redis::resp;

  #[test]
  fn slots_are_redis_clusters() {
    assert_eq!(crc16(b"123456789"), 0x31C3);
    // Known slots, as `CLUSTER KEYSLOT` answers them.
    assert_eq!(key_slot(b"foo"), 12182);
    assert_eq!(key_slot(b"bar"), 5061);
    assert_eq!(key_slot(b""), 0);
    assert_eq!(
      key_slot(b"{user1000}.following"),
      key_slot(b"{user1000}.followers")
    );
    assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    // An empty tag, or none closed, hashes the whole key.
    assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
    assert_eq!(key_slot(b"foo{bar"), crc16(b"foo{bar") % 16384);
    assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
  }

  #[test]
  fn nodes_read_as_redis_writes_them() {
    assert_eq!(
      Node::parse("127.0.0.1:7000"),
      Some(Node {
        host: "127.0.0.1".into(),
        port: 7000
      })
    );
    assert_eq!(
      Node::parse("::1:7000"),
      Some(Node {
        host: "::1".into(),
        port: 7000
      })
    );
    assert_eq!(
      Node::parse("redis-1.example:6379").unwrap().to_string(),
      "redis-1.example:6379"
    );
    assert_eq!(Node::parse("nonsense"), None);
  }

  #[test]
  fn cluster_slots_answers_are_read() {
    let answer = resp::decode(
      b"*2\r\n\
        *4\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n\
        *3\r\n:5461\r\n:16383\r\n*4\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n*0\r\n",
    )
    .unwrap();
    let ranges = parse_cluster_slots(answer, "10.0.0.9").unwrap();
    assert_eq!(
      ranges,
      [
        Range {
          first: 0,
          last: 5460,
          primary: Node {
            host: "127.0.0.1".into(),
            port: 7000
          }
        },
        Range {
          first: 5461,
          last: 16383,
          primary: Node {
            host: "10.0.0.9".into(),
            port: 7001
          }
        },
      ]
    );
    let refused = resp::decode(b"-ERR This instance has cluster support disabled\r\n").unwrap();
    assert!(parse_cluster_slots(refused, "h")
      .unwrap_err()
      .contains("cluster support disabled"));
    let bad = resp::decode(b"*1\r\n*3\r\n:0\r\n:99999\r\n*2\r\n$1\r\nh\r\n:1\r\n").unwrap();
    assert!(parse_cluster_slots(bad, "h").is_err());
  }
}
