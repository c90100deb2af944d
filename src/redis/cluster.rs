//! A Redis Cluster: one [`Wire`] per primary, each call sent to the primary
//! serving its key's slot, following the cluster as it changes.
//!
//! The slot map comes from `CLUSTER SLOTS`, asked of a known node (the
//! primaries, then the seeds) on a fresh connection: at start, whenever a
//! node redirects a call or a connection is lost, and every few seconds.
//! Between refreshes the map learns from the calls themselves:
//!
//! - `MOVED <slot> <node>`: the slot is that node's now; the map says so and
//!   the call goes there;
//! - `ASK <slot> <node>`: the slot is migrating; the call goes there once,
//!   after `ASKING`, and the map stays as it is;
//! - `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`: the call is sent again after a
//!   pause; `READONLY` (a demoted primary): the map is refreshed first.
//!
//! Each of these answers proves the call did not run, so sending it again
//! counts nothing twice; a call that timed out or whose connection was lost
//! may have run and is failed instead (see [`super::refusal`]). A call
//! follows at most [`MAX_REDIRECTS`] redirections and every retry stays
//! within its deadline.
//!
//! Every store operation touches one key, so any slot layout works, and the
//! keys are exactly those of Stoma's adapter on `ioredis.Cluster`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use super::event_loop::EventLoop;
use super::io::IO;
use super::job::{awaiting_with_deadlines, fail_all, take_expired, Job};
use super::refusal::{Refusal, MAX_REDIRECTS};
use super::replies::{Replies, Reply};
use super::setup::{self, Endpoint};
use super::slots::{self, key_slot, Node, Range, SLOTS};
use super::wire::{self, retry_later, Owner, Settings, Target, Wire, CLOSED};
use crate::errors::lock;

/// How often the slot map is refreshed when nothing asks for it sooner.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The least time between two refreshes: a burst of redirections or lost
/// connections costs one.
const REFRESH_GAP: Duration = Duration::from_millis(100);

/// A slot no known primary serves.
const UNKNOWN: u16 = u16::MAX;

pub struct Cluster {
  /// The nodes given by the user, and the settings (credentials, TLS) every
  /// node is reached with.
  seeds: Vec<Endpoint>,
  settings: Arc<Settings>,
  replies: Arc<Replies>,
  topology: RwLock<Topology>,
  /// Calls made before the first slot map came (locked after `topology`).
  pending: Mutex<Vec<Job>>,
  refresh: Mutex<Refresh>,
  /// A call joined `pending`: the refresh under way may have a nearer
  /// deadline to watch.
  wake: tokio::sync::Notify,
  closed: AtomicBool,
  me: Weak<Cluster>,
}

#[derive(Default)]
struct Topology {
  /// Which of `primaries` serves each slot ([`UNKNOWN`] if none).
  slots: Vec<u16>,
  primaries: Vec<Arc<Wire>>,
  /// Every live wire by its node's address: the primaries, and nodes met
  /// through ASK.
  nodes: HashMap<String, Arc<Wire>>,
  /// Wires of nodes no longer in the map, closing once their calls are
  /// answered.
  retired: Vec<Arc<Wire>>,
  /// What a flush looks at: `nodes` and `retired`.
  wires: Arc<[Arc<Wire>]>,
}

impl Topology {
  /// The wire for `slot`: its primary, or, for a slot nobody serves, any
  /// primary (which redirects the call, or refuses it with CLUSTERDOWN).
  fn wire_for(&self, slot: u16) -> Option<&Arc<Wire>> {
    let index = *self.slots.get(slot as usize)?;
    self
      .primaries
      .get(index as usize)
      .or(self.primaries.first())
  }

  fn rebuild_wires(&mut self) {
    self.retired.retain(|wire| wire.is_busy());
    self.wires = self.nodes.values().chain(&self.retired).cloned().collect();
  }
}

#[derive(Default)]
struct Refresh {
  running: bool,
  /// Asked for again while running.
  again: bool,
  last: Option<Instant>,
}

impl Cluster {
  /// A cluster reached through `seeds` (all sharing one set of settings);
  /// starts learning its slot map in the background.
  pub fn start(seeds: Vec<Endpoint>, settings: Arc<Settings>, replies: Arc<Replies>) -> Arc<Self> {
    let cluster = Arc::new_cyclic(|me| Cluster {
      seeds,
      settings,
      replies,
      topology: RwLock::new(Topology::default()),
      pending: Mutex::new(Vec::new()),
      refresh: Mutex::new(Refresh::default()),
      wake: tokio::sync::Notify::new(),
      closed: AtomicBool::new(false),
      me: me.clone(),
    });
    cluster.refresh_soon();
    let me = Arc::downgrade(&cluster);
    IO.spawn(async move {
      loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        match me.upgrade() {
          Some(cluster) if !cluster.is_closed() => cluster.refresh_soon(),
          _ => return,
        }
      }
    });
    cluster
  }

  pub fn slot(key: &str) -> u16 {
    key_slot(key.as_bytes())
  }

  /// Queues `job` on the wire of its slot's primary; answers that wire, or
  /// `None` when the job waits for the first slot map.
  pub fn submit(&self, job: Job) -> Option<Arc<Wire>> {
    {
      // The read lock is held while queueing, so a refresh that retires
      // the wire cannot miss the job (see `apply`).
      let topology = self.topology.read().unwrap_or_else(|e| e.into_inner());
      if let Some(wire) = topology.wire_for(job.slot) {
        wire.submit(job);
        return Some(Arc::clone(wire));
      }
    }
    let topology = self.topology.write().unwrap_or_else(|e| e.into_inner());
    if let Some(wire) = topology.wire_for(job.slot) {
      wire.submit(job);
      return Some(Arc::clone(wire));
    }
    lock(&self.pending).push(job);
    drop(topology);
    self.wake.notify_one();
    self.refresh_soon();
    None
  }

  /// [`submit`](Self::submit) from a thread other than the JS thread, and
  /// send it at once.
  fn route(&self, job: Job) {
    if let Some(wire) = self.submit(job) {
      wire.flush_elsewhere();
    }
  }

  fn wires(&self) -> Arc<[Arc<Wire>]> {
    Arc::clone(
      &self
        .topology
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .wires,
    )
  }

  pub fn flush(&self, spin: bool, defer: bool, events: Option<&EventLoop>) -> Vec<(f64, Reply)> {
    wire::flush(&self.wires(), spin, defer, events)
  }

  pub fn write_early(&self) -> Vec<(f64, Reply)> {
    wire::write_early(&self.wires())
  }

  pub fn awaiting(&self) -> bool {
    self.wires().iter().any(|wire| wire.awaiting())
  }

  /// Refuses later calls; every node's connection closes once its calls
  /// are answered.
  pub fn close(&self) {
    self.closed.store(true, Ordering::Release);
    let pending = {
      let topology = self.topology.write().unwrap_or_else(|e| e.into_inner());
      for wire in topology.nodes.values().chain(&topology.retired) {
        wire.close();
      }
      std::mem::take(&mut *lock(&self.pending))
    };
    self.replies.send_all(fail_all(pending, CLOSED));
    self.wake.notify_one();
  }

  pub fn is_closed(&self) -> bool {
    self.closed.load(Ordering::Acquire)
  }

  /// The wire of the node at `node`, made (and connecting) if new.
  fn wire_at(&self, topology: &mut Topology, node: &Node) -> Arc<Wire> {
    let address = node.to_string();
    if let Some(wire) = topology.nodes.get(&address) {
      return Arc::clone(wire);
    }
    let owner: Weak<dyn Owner> = self.me.clone();
    let endpoint = self.seeds[0].at(node);
    let wire = Wire::new(
      Target::Fixed(endpoint),
      Arc::clone(&self.settings),
      Arc::clone(&self.replies),
      Some(owner),
    );
    if self.is_closed() {
      wire.close();
    } else {
      wire.connect_in_background();
    }
    topology.nodes.insert(address, Arc::clone(&wire));
    topology.rebuild_wires();
    wire
  }

  /// A MOVED answer: `slot` is served by `node` now.
  fn learn(&self, slot: u16, node: &Node) -> Arc<Wire> {
    let mut topology = self.topology.write().unwrap_or_else(|e| e.into_inner());
    let wire = self.wire_at(&mut topology, node);
    let index = match topology
      .primaries
      .iter()
      .position(|w| Arc::ptr_eq(w, &wire))
    {
      Some(index) => index,
      None => {
        topology.primaries.push(Arc::clone(&wire));
        topology.primaries.len() - 1
      }
    };
    if topology.slots.len() != SLOTS {
      topology.slots = vec![UNKNOWN; SLOTS];
    }
    topology.slots[slot as usize] = index as u16;
    wire
  }

  /// Refreshes the slot map soon: now, or once [`REFRESH_GAP`] has passed
  /// since the last refresh; a refresh under way runs once more.
  fn refresh_soon(&self) {
    let mut refresh = lock(&self.refresh);
    if self.is_closed() {
      return;
    }
    if refresh.running {
      refresh.again = true;
      return;
    }
    refresh.running = true;
    let pause = refresh
      .last
      .map(|last| (last + REFRESH_GAP).saturating_duration_since(Instant::now()))
      .unwrap_or_default();
    let me = self.me.clone();
    IO.spawn(async move {
      tokio::time::sleep(pause).await;
      if let Some(cluster) = me.upgrade() {
        cluster.refresh().await;
      }
    });
  }

  async fn refresh(self: Arc<Self>) {
    loop {
      let found = awaiting_with_deadlines(
        self.discover(),
        || lock(&self.pending).iter().map(|job| job.deadline).min(),
        || self.expire_pending(),
        &self.wake,
      )
      .await;
      match found {
        Ok(ranges) => self.apply(ranges),
        Err(cause) => {
          let pending = std::mem::take(&mut *lock(&self.pending));
          self.replies.send_all(fail_all(pending, &cause));
        }
      }
      {
        let mut refresh = lock(&self.refresh);
        refresh.last = Some(Instant::now());
        if !std::mem::take(&mut refresh.again) || self.is_closed() {
          refresh.running = false;
          return;
        }
      }
      tokio::time::sleep(REFRESH_GAP).await;
    }
  }

  /// Asks the known primaries, then the seeds, for the slot map; answers
  /// the first map found, or why none was.
  async fn discover(&self) -> Result<Vec<Range>, String> {
    let mut candidates: Vec<Endpoint> = {
      let topology = self.topology.read().unwrap_or_else(|e| e.into_inner());
      topology
        .primaries
        .iter()
        .filter_map(|wire| Node::parse(&wire.address()))
        .map(|node| self.seeds[0].at(&node))
        .collect()
    };
    candidates.extend(self.seeds.iter().cloned());
    let mut causes = Vec::new();
    let mut asked = Vec::new();
    let question = [::redis::cmd("CLUSTER").arg("SLOTS").clone()];
    for endpoint in candidates {
      let address = endpoint.address();
      if asked.contains(&address) {
        continue;
      }
      let answer = tokio::time::timeout(
        self.settings.connect_timeout,
        setup::ask(&endpoint, &question),
      )
      .await;
      let ranges = match answer {
        Ok(Ok(mut answers)) => {
          slots::parse_cluster_slots(answers.remove(0), endpoint.host().unwrap_or_default())
        }
        Ok(Err(cause)) => Err(cause),
        Err(_) => Err(format!(
          "no answer within {} ms",
          self.settings.connect_timeout.as_millis()
        )),
      };
      match ranges {
        Ok(ranges) if !ranges.is_empty() => return Ok(ranges),
        Ok(_) => causes.push(format!("{address}: no slots are assigned")),
        Err(cause) => causes.push(format!("{address}: {cause}")),
      }
      asked.push(address);
    }
    Err(format!(
      "cannot learn the Redis Cluster's slots ({})",
      causes.join("; ")
    ))
  }

  /// Makes `ranges` the slot map: a wire for each primary (new ones
  /// connect), nodes gone from the map retired, and the calls waiting for a
  /// map, or queued on a retired wire, sent where the map says.
  fn apply(&self, ranges: Vec<Range>) {
    let mut resend = Vec::new();
    {
      let mut topology = self.topology.write().unwrap_or_else(|e| e.into_inner());
      let mut slots = vec![UNKNOWN; SLOTS];
      let mut primaries: Vec<Arc<Wire>> = Vec::new();
      for range in &ranges {
        let wire = self.wire_at(&mut topology, &range.primary);
        let index = match primaries.iter().position(|w| Arc::ptr_eq(w, &wire)) {
          Some(index) => index,
          None => {
            primaries.push(wire);
            primaries.len() - 1
          }
        };
        slots[range.first as usize..=range.last as usize].fill(index as u16);
      }
      let keep: Vec<String> = ranges
        .iter()
        .map(|range| range.primary.to_string())
        .collect();
      let leaving: Vec<String> = topology
        .nodes
        .keys()
        .filter(|address| !keep.contains(address))
        .cloned()
        .collect();
      for address in leaving {
        if let Some(wire) = topology.nodes.remove(&address) {
          resend.extend(wire.take_unsent());
          wire.close();
          topology.retired.push(wire);
        }
      }
      topology.slots = slots;
      topology.primaries = primaries;
      resend.append(&mut lock(&self.pending));
      topology.rebuild_wires();
    }
    let mut touched: Vec<Arc<Wire>> = Vec::new();
    for job in resend {
      if let Some(wire) = self.submit(job) {
        if !touched.iter().any(|w| Arc::ptr_eq(w, &wire)) {
          touched.push(wire);
        }
      }
    }
    for wire in touched {
      wire.flush_elsewhere();
    }
  }

  /// Fails the calls that waited for a slot map past their deadline.
  fn expire_pending(&self) {
    let expired = take_expired(&mut lock(&self.pending));
    let ms = self.settings.command_timeout.as_millis();
    self.replies.send_all(fail_all(
      expired,
      &format!("could not learn the Redis Cluster's slots within {ms} ms"),
    ));
  }

  /// Sends `job` again after a pause, routed afresh.
  fn retry(&self, job: Job, cause: String) -> Vec<(f64, Reply)> {
    let me = self.me.clone();
    let replies = Arc::clone(&self.replies);
    retry_later(job, cause, move |job| match me.upgrade() {
      Some(cluster) => cluster.route(job),
      None => replies.send_all(job.failed(CLOSED)),
    })
  }
}

impl Owner for Cluster {
  fn refused(
    &self,
    wire: &Arc<Wire>,
    mut job: Job,
    refusal: Refusal,
    error: String,
  ) -> Vec<(f64, Reply)> {
    let cause = format!("Redis at {}: {error}", wire.address());
    let target = match &refusal {
      Refusal::Moved { to, .. } | Refusal::Ask { to } => {
        if job.redirects >= MAX_REDIRECTS {
          return job.failed(&format!("{cause} (after {MAX_REDIRECTS} redirections)"));
        }
        let Some(node) = Node::parse(to) else {
          return job.failed(&cause);
        };
        job.redirects += 1;
        node
      }
      Refusal::Busy => return self.retry(job, cause),
      Refusal::ReadOnly => {
        self.refresh_soon();
        return self.retry(job, cause);
      }
    };
    let wire = match refusal {
      Refusal::Moved { slot, .. } => {
        job.asking = false;
        // One slot moved usually means more did: refresh the whole map.
        self.refresh_soon();
        self.learn(slot, &target)
      }
      _ => {
        job.asking = true;
        let mut topology = self.topology.write().unwrap_or_else(|e| e.into_inner());
        self.wire_at(&mut topology, &target)
      }
    };
    wire.submit(job);
    wire.flush_elsewhere();
    Vec::new()
  }

  fn lost(&self, _wire: &Arc<Wire>) {
    self.refresh_soon();
  }
}
