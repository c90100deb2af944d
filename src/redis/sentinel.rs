//! Redis Sentinel: where a named primary is, and when it moves.
//!
//! The wire of a sentinel deployment asks the sentinels for the primary's
//! address (`SENTINEL get-master-addr-by-name`) every time it connects, and
//! the connection only carries calls once the server confirms it is a
//! primary (`ROLE`, see [`super::setup::Role::Primary`]). It reconnects —
//! asking again — when:
//!
//! - its connection is lost (the primary died);
//! - a sentinel starts promoting a replica ([`follow`] listens to all of
//!   them: only the one leading the failover says so): the wire stops
//!   writing to the old primary at once and connects to the replica as soon
//!   as it is a primary. In a failover that leaves the old primary running
//!   (a switchover, `SENTINEL FAILOVER`) it stays a primary until the
//!   sentinels announce `+switch-master` (~0.5 s here), and whatever it
//!   acknowledges meanwhile is lost when it becomes a replica — counts the
//!   new primary hands out again. Waiting for that announcement cost ~40,000
//!   counts in a test at full speed; leaving at the promotion, none;
//! - the server answers READONLY: it was demoted, and the call did not run
//!   (the wire sends it again after the new primary is found).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::redis::Value;

use super::io::IO;
use super::setup::{self, Endpoint, Greeting, Subscription};
use super::slots::Node;
use super::socket::Socket;
use crate::errors::lock;

/// How long to wait before subscribing to a sentinel again after losing it.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(500);

/// How long a replica being promoted is taken for the primary without the
/// sentinels saying so (they do within a second or two, or abort).
const PROMOTION_HINT: Duration = Duration::from_secs(30);

/// Between attempts to reach a replica being promoted that is not a
/// primary yet.
const PROMOTION_POLL: Duration = Duration::from_millis(10);

/// The sentinel events a wire follows.
const SWITCH_MASTER: &str = "+switch-master";
const PROMOTING: &str = "+failover-state-send-slaveof-noone";
const ABORTED: &str = "-failover-abort-slave-timeout";

/// The sentinels watching one primary, and how to reach that primary.
pub struct Sentinels {
  /// The name the sentinels monitor the primary under.
  pub name: String,
  /// The sentinels themselves (their own credentials and TLS).
  pub nodes: Vec<Endpoint>,
  /// Credentials, database and TLS for the primary, wherever it is.
  pub primary: Endpoint,
  pub timeout: Duration,
  /// A replica the sentinels are promoting, and since when.
  promoting: Mutex<Option<(Node, Instant)>>,
}

impl Sentinels {
  pub fn new(name: String, nodes: Vec<Endpoint>, primary: Endpoint, timeout: Duration) -> Self {
    Sentinels {
      name,
      nodes,
      primary,
      timeout,
      promoting: Mutex::new(None),
    }
  }

  /// Connects to the primary, wherever it is; answers the connection and
  /// its address.
  pub async fn open(&self, greeting: &Greeting) -> Result<(Socket, String), String> {
    let promoting = lock(&self.promoting)
      .clone()
      .filter(|(_, since)| since.elapsed() < PROMOTION_HINT);
    let Some((node, _)) = promoting else {
      let endpoint = self.locate().await?;
      return Ok((setup::open(&endpoint, greeting).await?, endpoint.address()));
    };
    // The replica takes a moment to become a primary; until then it says
    // it is a replica (and the caller's connect timeout bounds the wait).
    let endpoint = self.primary.at(&node);
    loop {
      match setup::open(&endpoint, greeting).await {
        Ok(socket) => return Ok((socket, endpoint.address())),
        Err(_) => tokio::time::sleep(PROMOTION_POLL).await,
      }
    }
  }

  /// The primary's endpoint, as the first sentinel that knows it says.
  async fn locate(&self) -> Result<Endpoint, String> {
    let question = [::redis::cmd("SENTINEL")
      .arg("get-master-addr-by-name")
      .arg(&self.name)
      .clone()];
    let mut causes = Vec::new();
    for sentinel in &self.nodes {
      let address = sentinel.address();
      let answer = match tokio::time::timeout(self.timeout, setup::ask(sentinel, &question)).await {
        Ok(Ok(mut answers)) => answers.remove(0),
        Ok(Err(cause)) => {
          causes.push(format!("sentinel {address}: {cause}"));
          continue;
        }
        Err(_) => {
          causes.push(format!(
            "sentinel {address}: no answer within {} ms",
            self.timeout.as_millis()
          ));
          continue;
        }
      };
      match primary_of(&answer) {
        Some(node) => return Ok(self.primary.at(&node)),
        None => causes.push(format!(
          "sentinel {address} does not know a primary named {:?}",
          self.name
        )),
      }
    }
    Err(format!(
      "no sentinel named the primary ({})",
      causes.join("; ")
    ))
  }

  /// Acts on a sentinel event: moves `wire` to where the primary is going.
  fn heard(&self, channel: &[u8], payload: &[u8], wire: &Arc<impl Follower>) {
    let Some(event) = Event::read(channel, payload, &self.name) else {
      return;
    };
    let to = match event {
      Event::Promoting(node) => {
        *lock(&self.promoting) = Some((node.clone(), Instant::now()));
        node
      }
      Event::Switched(node) | Event::Aborted(node) => {
        // The sentinels name the primary again.
        *lock(&self.promoting) = None;
        node
      }
    };
    wire.relocate(Some(&to.to_string()));
  }
}

/// The connection to the primary, as sentinel events move it (the
/// connection knows the sentinels, not the other way round).
pub trait Follower: Send + Sync {
  /// Leaves the primary it is connected to, or connecting to, for `to`
  /// (or wherever the sentinels say, when `None`).
  fn relocate(self: &Arc<Self>, to: Option<&str>);
  /// Closed: nothing to follow for any more.
  fn is_closed(&self) -> bool;
}

/// A sentinel event about our primary, and the node it points to.
#[derive(Debug, PartialEq, Eq)]
enum Event {
  /// A replica is being promoted (`+failover-state-send-slaveof-noone`).
  Promoting(Node),
  /// The failover is done: the primary is this node (`+switch-master`).
  Switched(Node),
  /// The promotion timed out: the old primary stays.
  Aborted(Node),
}

impl Event {
  /// Reads a message of `channel`; `None` if it is about another primary.
  fn read(channel: &[u8], payload: &[u8], name: &str) -> Option<Event> {
    let text = std::str::from_utf8(payload).ok()?;
    let fields: Vec<&str> = text.split(' ').collect();
    let node = |host: &str, port: &str| -> Option<Node> {
      Some(Node {
        host: host.to_owned(),
        port: port.parse().ok()?,
      })
    };
    match (std::str::from_utf8(channel).ok()?, fields.as_slice()) {
      // <name> <old host> <old port> <new host> <new port>
      (SWITCH_MASTER, [master, _, _, host, port]) if *master == name => {
        Some(Event::Switched(node(host, port)?))
      }
      // slave <address> <host> <port> @ <name> <primary host> <primary port>
      (PROMOTING, ["slave", _, host, port, "@", master, ..]) if *master == name => {
        Some(Event::Promoting(node(host, port)?))
      }
      // master <name> <host> <port>
      (ABORTED, ["master", master, host, port]) if *master == name => {
        Some(Event::Aborted(node(host, port)?))
      }
      _ => None,
    }
  }
}

/// The node in an answer to `SENTINEL get-master-addr-by-name`.
fn primary_of(answer: &Value) -> Option<Node> {
  let Value::Array(fields) = answer else {
    return None;
  };
  let [Value::BulkString(host), Value::BulkString(port)] = fields.as_slice() else {
    return None;
  };
  Some(Node {
    host: String::from_utf8_lossy(host).into_owned(),
    port: std::str::from_utf8(port).ok()?.parse().ok()?,
  })
}

/// Listens to every sentinel for failovers of the primary and moves `wire`
/// along: only the sentinel leading a failover announces the promotion, and
/// any of them may lead. Each listener ends when the wire is closed or
/// dropped. (Events heard from several sentinels move the wire once: a
/// connection already at the new primary is kept.)
pub fn follow<F: Follower + 'static>(sentinels: &Arc<Sentinels>, wire: &Arc<F>) {
  for index in 0..sentinels.nodes.len() {
    IO.spawn(listen(Arc::clone(sentinels), index, Arc::downgrade(wire)));
  }
}

/// Listens to sentinel `index`, subscribing again whenever it is lost.
async fn listen<F: Follower>(sentinels: Arc<Sentinels>, index: usize, wire: Weak<F>) {
  let alive = || wire.upgrade().filter(|wire| !wire.is_closed());
  let channels = [SWITCH_MASTER, PROMOTING, ABORTED];
  let sentinel = &sentinels.nodes[index];
  while alive().is_some() {
    let subscribed =
      tokio::time::timeout(sentinels.timeout, Subscription::open(sentinel, &channels)).await;
    if let Ok(Ok(mut subscription)) = subscribed {
      loop {
        // Wakes every second to notice a closed wire.
        match tokio::time::timeout(Duration::from_secs(1), subscription.next()).await {
          Ok(Ok((channel, payload))) => match alive() {
            Some(wire) => sentinels.heard(&channel, &payload, &wire),
            None => return,
          },
          Ok(Err(_)) => break,
          Err(_) if alive().is_none() => return,
          Err(_) => {}
        }
      }
    }
    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::redis::resp;

  fn node(port: u16) -> Node {
    Node {
      host: "127.0.0.1".into(),
      port,
    }
  }

  #[test]
  fn sentinel_answers_are_read() {
    let answer = resp::decode(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n").unwrap();
    assert_eq!(primary_of(&answer), Some(node(6380)));
    assert_eq!(primary_of(&resp::decode(b"*-1\r\n").unwrap()), None);
  }

  #[test]
  fn failover_events_about_our_primary_are_read() {
    let read = |channel: &str, payload: &str| {
      Event::read(channel.as_bytes(), payload.as_bytes(), "mymaster")
    };
    assert_eq!(
      read(SWITCH_MASTER, "mymaster 127.0.0.1 6379 127.0.0.1 6380"),
      Some(Event::Switched(node(6380)))
    );
    assert_eq!(
      read(SWITCH_MASTER, "other 127.0.0.1 6379 127.0.0.1 6380"),
      None
    );
    assert_eq!(
      read(
        PROMOTING,
        "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"
      ),
      Some(Event::Promoting(node(6380)))
    );
    assert_eq!(
      read(
        PROMOTING,
        "slave 127.0.0.1:6380 127.0.0.1 6380 @ other 127.0.0.1 6379"
      ),
      None
    );
    assert_eq!(
      read(ABORTED, "master mymaster 127.0.0.1 6379"),
      Some(Event::Aborted(node(6379)))
    );
    assert_eq!(read("+sdown", "master mymaster 127.0.0.1 6379"), None);
  }
}
