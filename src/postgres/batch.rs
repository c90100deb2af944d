//! Group commit: writes that queue for one connection go to the server
//! together, in one transaction, so they share one WAL flush.
//!
//! With PostgreSQL's durable default (`synchronous_commit = on`) every
//! commit waits for its WAL record to reach disk. A single statement is its
//! own transaction, so N writes pipelined on one connection still wait for N
//! flushes one after another. Sent as `BEGIN`, the N statements, `COMMIT`,
//! they wait for one: each write is acknowledged only once that `COMMIT`
//! answered, so an acknowledged write survives a crash exactly as before.
//!
//! Each connection has a [`Lane`]: at most one round trip (one call, or one
//! group of calls) is in flight on it at a time. A call that finds the lane
//! free runs at once, alone, in the caller's own task — the uncontended path
//! sends just its statement, with no `BEGIN`/`COMMIT`. Calls that
//! arrive while the lane is busy wait in its queue; when the lane frees up, a
//! task takes up to [`MAX_GROUP`] of them and sends them in one pipeline:
//!
//! - reads, cleanups and scripts first, each as its own statement: they are
//!   answered as soon as their rows arrive (never after the flush), and a
//!   read never sees, nor is rolled back with, the group's uncommitted
//!   writes;
//! - then the single-row writes, wrapped in `BEGIN … COMMIT` when there are
//!   two or more.
//!
//! Every write is one statement on one row and every caller gets that
//! statement's own result, so each operation keeps the atomicity and answer
//! it has alone. If the transaction is rolled back (one statement failed, a
//! deadlock was broken, `COMMIT` failed), its writes did not happen: each is
//! run again on its own, so a bad call fails alone and its neighbours
//! succeed.
//!
//! Locks, and why this cannot deadlock: a transaction holds the row lock of
//! every row it wrote until `COMMIT`, so two open transactions taking the
//! same rows in opposite orders would deadlock. Each group's writes are
//! therefore sent sorted by (table, key): every group — on any connection,
//! in any process sharing the database — takes its locks in that one global
//! order, so waits cannot form a cycle. (The pool also queues a key's writes
//! on the connection its key hashes to, see `pool.rs`, so within a process
//! our groups rarely wait on one another at all.) The sort is stable, so
//! writes to one key keep their queue order;
//! writes to different keys touch different rows and commute, so the
//! results are those of the queue order. Statements outside a group hold at
//! most the one lock they wait for, and cleanups skip locked rows
//! (`SKIP LOCKED`, see `sql.rs`), so neither can close a cycle either.
//!
//! tokio-postgres sends a request when its future is first polled, in the
//! order first polled. Only the lane's holder sends on a connection, and it
//! sends a whole group before awaiting any of it ([`send_now`]), so nothing
//! else can slip between a group's `BEGIN` and `COMMIT`.
//!
//! Statements. Each call is sent by the name its statement was prepared
//! under on this connection (Bind, Execute, Sync: one round trip), the
//! statement prepared the first time the connection needs it — before
//! anything of its group is sent, so a group still goes out whole. Behind a
//! pooler that does not keep named statements the pool switches to unnamed
//! ones (text and parameter types with each call, tokio-postgres's
//! `query_typed`, as node-postgres sends them), resending only calls that
//! ran nothing: see `prepared.rs`.
//!
//! A group's `BEGIN … COMMIT` is one transaction, which a pooler in
//! transaction mode keeps on one server connection; pipelined statements
//! outside it each end in their own Sync, and PgBouncer keeps the server
//! connection until it has answered every Sync it was sent.
//! (`synchronousCommit: false` travels inside each write statement, for its
//! own transaction only: see `sql.rs`.)

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::prepared::{statement_missing, Naming, Prepared};
use super::sql::{Statements, Stmt};
use crate::errors::lock;

/// The most calls sent in one group: enough to share a flush widely, few
/// enough that one group's time (and its row locks) stays short.
pub const MAX_GROUP: usize = 64;

/// One statement parameter, owned so a queued call can outlive its caller's
/// stack frame.
pub type Param = Box<dyn ToSql + Send + Sync>;

/// Parameters for [`Call::keyed`] and [`Call::unkeyed`].
macro_rules! params {
  ($($param:expr),* $(,)?) => {
    vec![$(Box::new($param) as $crate::postgres::batch::Param),*]
  };
}
pub(crate) use params;

/// What a caller asks of the database.
pub enum Call {
  /// One of the stores' statements; `key` (if any) is its `$1`, `params` the
  /// rest.
  Statement {
    stmt: Stmt,
    key: Option<String>,
    params: Vec<Param>,
  },
  /// SQL statements without parameters, sent as one simple query.
  Script(String),
}

impl Call {
  pub fn keyed(stmt: Stmt, key: String, params: Vec<Param>) -> Call {
    Call::Statement {
      stmt,
      key: Some(key),
      params,
    }
  }

  pub fn unkeyed(stmt: Stmt, params: Vec<Param>) -> Call {
    Call::Statement {
      stmt,
      key: None,
      params,
    }
  }

  pub fn stmt(&self) -> Option<Stmt> {
    match self {
      Call::Statement { stmt, .. } => Some(*stmt),
      Call::Script(_) => None,
    }
  }

  /// For a write of exactly one row, the row: (table, key). Only these join
  /// a group's transaction, in this order.
  pub fn row(&self) -> Option<(u8, &str)> {
    match self {
      Call::Statement {
        stmt,
        key: Some(key),
        ..
      } if stmt.changes_one_row() => Some((stmt.table_rank(), key)),
      _ => None,
    }
  }
}

/// A call's answer: rows, or how many rows a statement changed (0 for a
/// script).
pub enum Answer {
  Rows(Vec<Row>),
  Count(u64),
}

/// A call's result. The error is shared so that, when the connection is lost
/// while a group commits, each of its writers can be told why.
pub type Outcome = Result<Answer, Arc<tokio_postgres::Error>>;

/// One connection as its calls see it: the client they are sent on, the
/// statement texts, how the pool sends them and those prepared on this
/// connection, and its queue (see the module docs).
pub struct Lane {
  client: Client,
  statements: Arc<Statements>,
  naming: Arc<Naming>,
  prepared: Prepared,
  state: Mutex<LaneState>,
}

impl Lane {
  pub fn new(client: Client, statements: Arc<Statements>, naming: Arc<Naming>) -> Self {
    Lane {
      client,
      statements,
      naming,
      prepared: Prepared::default(),
      state: Mutex::default(),
    }
  }

  /// Whether the connection broke (or was closed).
  pub fn is_closed(&self) -> bool {
    self.client.is_closed()
  }

  /// `call` with the statement it goes by on this connection (see
  /// [`Job`]); a statement that cannot be prepared is the call's answer.
  async fn job(&self, call: Call) -> Result<Job, Arc<tokio_postgres::Error>> {
    let statement = match call.stmt() {
      Some(stmt) => self
        .prepared
        .get(&self.client, &self.statements, &self.naming, stmt)
        .await
        .map_err(Arc::new)?,
      None => None,
    };
    Ok(Job { call, statement })
  }
}

#[derive(Default)]
struct LaneState {
  /// A call or a group is in flight; new calls queue.
  busy: bool,
  waiting: VecDeque<Waiting>,
}

/// A queued call and where its answer goes.
struct Waiting {
  call: Call,
  /// The caller's time limit, which also bounds the group it goes in.
  limit: Duration,
  reply: oneshot::Sender<Outcome>,
}

/// Runs `call` on `lane`: at once if it is free, else in the next group.
/// `None` means no answer will come (the group ran out of time or its task
/// ended); the caller bounds the whole wait with `limit`.
pub async fn run(lane: &Arc<Lane>, call: Call, limit: Duration) -> Option<Outcome> {
  let queued = {
    let mut state = lock(&lane.state);
    if state.busy {
      let (reply, answer) = oneshot::channel();
      state.waiting.push_back(Waiting { call, limit, reply });
      Err(answer)
    } else {
      state.busy = true;
      Ok(call)
    }
  };
  match queued {
    Ok(call) => {
      let _turn = Turn(lane.clone());
      Some(match lane.job(call).await {
        Ok(job) => job.send(lane).await,
        Err(error) => Err(error),
      })
    }
    Err(answer) => answer.await.ok(),
  }
}

/// Holding the lane. Dropping it — when the call or group is done, timed
/// out or panicked — frees the lane, or hands it to a task that sends what
/// queued meanwhile.
struct Turn(Arc<Lane>);

impl Drop for Turn {
  fn drop(&mut self) {
    let mut state = lock(&self.0.state);
    if state.waiting.is_empty() {
      state.busy = false;
      return;
    }
    match tokio::runtime::Handle::try_current() {
      Ok(runtime) => {
        drop(state);
        runtime.spawn(drain(Turn(self.0.clone())));
      }
      // No runtime (the process is shutting down): nobody can send them.
      Err(_) => {
        state.waiting.clear();
        state.busy = false;
      }
    }
  }
}

/// Sends the queued calls group after group until the queue is empty.
async fn drain(turn: Turn) {
  loop {
    let group: Vec<Waiting> = {
      let mut state = lock(&turn.0.state);
      // A caller that gave up (timed out) is not sent at all.
      state.waiting.retain(|w| !w.reply.is_closed());
      let take = state.waiting.len().min(MAX_GROUP);
      state.waiting.drain(..take).collect()
    };
    let Some(limit) = group.iter().map(|w| w.limit).max() else {
      return; // `turn` drops: the lane is free again
    };
    // Out of time, the group's replies are dropped and its callers report
    // that the server did not answer (and discard the connection).
    let _ = timeout(limit, send_group(&turn.0, group)).await;
  }
}

/// Sends `call` — by `statement`'s name, or unnamed without one — and
/// collects its answer; the request goes out on the first poll.
async fn execute(lane: &Lane, call: &Call, statement: Option<&Statement>) -> Outcome {
  let client = &lane.client;
  let answer = match call {
    Call::Statement { stmt, key, params } => {
      let values = key
        .iter()
        .map(|k| k as &(dyn ToSql + Sync))
        .chain(params.iter().map(|p| &**p as &(dyn ToSql + Sync)));
      match (statement, stmt.returns_rows()) {
        (Some(statement), true) => client
          .query(statement, &values.collect::<Vec<_>>())
          .await
          .map(Answer::Rows),
        (Some(statement), false) => client
          .execute(statement, &values.collect::<Vec<_>>())
          .await
          .map(Answer::Count),
        (None, returns_rows) => {
          let types = stmt.param_types();
          debug_assert_eq!(usize::from(key.is_some()) + params.len(), types.len());
          let typed: Vec<(&(dyn ToSql + Sync), Type)> = values.zip(types.iter().cloned()).collect();
          let text = lane.statements.text(*stmt);
          if returns_rows {
            client.query_typed(text, &typed).await.map(Answer::Rows)
          } else {
            client.execute_typed(text, &typed).await.map(Answer::Count)
          }
        }
      }
    }
    Call::Script(sql) => client.batch_execute(sql).await.map(|()| Answer::Count(0)),
  };
  answer.map_err(Arc::new)
}

/// A call ready to send: with the statement prepared for it on this
/// connection, or `None` to send it unnamed (also every script).
struct Job {
  call: Call,
  statement: Option<Statement>,
}

impl Job {
  /// Sends the call now (see [`send_now`]) as its own transaction; the
  /// answer comes when awaited. If the server did not know its named
  /// statement, nothing of it ran: the pool switches to unnamed statements
  /// and the call goes again, unnamed, when awaited (see `prepared.rs`).
  fn send<'a>(&'a self, lane: &'a Lane) -> Sent<impl Future<Output = Outcome> + 'a> {
    send_now(async move {
      match execute(lane, &self.call, self.statement.as_ref()).await {
        Err(error) if self.statement.is_some() && statement_missing(&error) => {
          lane.naming.switch_to_unnamed();
          execute(lane, &self.call, None).await
        }
        outcome => outcome,
      }
    })
  }

  /// Sends the call now inside a group's transaction, never again: a
  /// refusal there rolls the whole transaction back, and `send_group` sends
  /// each of its writes again on its own.
  fn send_in_transaction<'a>(&'a self, lane: &'a Lane) -> Sent<impl Future<Output = Outcome> + 'a> {
    send_now(execute(lane, &self.call, self.statement.as_ref()))
  }
}

type Reply = oneshot::Sender<Outcome>;
type Calls = Vec<(Call, Reply)>;

/// Each call as a [`Job`], with its reply; a call whose statement cannot be
/// prepared is answered with that error here. Statements not yet prepared
/// on this connection are prepared now, before anything is sent.
async fn jobs(lane: &Lane, calls: Calls) -> Vec<(Job, Reply)> {
  let mut jobs = Vec::with_capacity(calls.len());
  for (call, reply) in calls {
    match lane.job(call).await {
      Ok(job) => jobs.push((job, reply)),
      Err(error) => {
        let _ = reply.send(Err(error));
      }
    }
  }
  jobs
}

/// Sends one group (see the module docs).
async fn send_group(lane: &Lane, group: Vec<Waiting>) {
  let calls = group
    .into_iter()
    .map(|Waiting { call, reply, .. }| (call, reply))
    .collect();
  let (mut writes, mut others): (Vec<_>, Vec<_>) = jobs(lane, calls)
    .await
    .into_iter()
    .partition(|(job, _)| job.call.row().is_some());
  if writes.len() < 2 {
    others.append(&mut writes);
    return one_by_one(lane, others).await;
  }
  writes.sort_by(|(a, _), (b, _)| a.call.row().cmp(&b.call.row()));
  let (others, other_replies): (Vec<Job>, Vec<Reply>) = others.into_iter().unzip();
  let (writes, write_replies): (Vec<Job>, Vec<Reply>) = writes.into_iter().unzip();

  // Send everything now, in this order; then collect the answers in the
  // same order, which is the order they arrive in.
  let others_sent: Vec<_> = others.iter().map(|job| job.send(lane)).collect();
  let begin = send_now(lane.client.batch_execute("BEGIN"));
  let writes_sent: Vec<_> = writes
    .iter()
    .map(|job| job.send_in_transaction(lane))
    .collect();
  let commit = send_now(lane.client.batch_execute("COMMIT"));

  for (sent, reply) in others_sent.into_iter().zip(other_replies) {
    let _ = reply.send(sent.await);
  }
  let begun = begin.await;
  let mut outcomes = Vec::with_capacity(writes_sent.len());
  for sent in writes_sent {
    outcomes.push(sent.await);
  }
  let committed = commit.await;

  // An error from the server inside the transaction (or on COMMIT) means it
  // was rolled back: none of its writes happened, so each runs again alone
  // and only a bad one fails — or, if the server did not know a named
  // statement, each goes again unnamed, the pool having switched. Anything
  // else — success, or the connection lost — is final: a write is never
  // sent twice.
  let refused = |error: &tokio_postgres::Error| error.as_db_error().is_some();
  if outcomes
    .iter()
    .any(|o| o.as_ref().is_err_and(|e| statement_missing(e)))
  {
    lane.naming.switch_to_unnamed();
  }
  let rolled_back = begun.is_ok()
    && (outcomes
      .iter()
      .any(|o| o.as_ref().is_err_and(|e| refused(e)))
      || committed.as_ref().is_err_and(refused));
  if rolled_back {
    let calls = writes
      .into_iter()
      .map(|job| job.call)
      .zip(write_replies)
      .collect();
    return one_by_one(lane, jobs(lane, calls).await).await;
  }
  let failure = begun.err().or(committed.err()).map(Arc::new);
  for (outcome, reply) in outcomes.into_iter().zip(write_replies) {
    let outcome = match (&failure, outcome) {
      (Some(error), Ok(_)) => Err(error.clone()),
      (_, outcome) => outcome,
    };
    let _ = reply.send(outcome);
  }
}

/// Sends each call as its own statement, all pipelined, and answers each as
/// its result arrives.
async fn one_by_one(lane: &Lane, jobs: Vec<(Job, Reply)>) {
  let (jobs, replies): (Vec<Job>, Vec<Reply>) = jobs.into_iter().unzip();
  let sent: Vec<_> = jobs.iter().map(|job| job.send(lane)).collect();
  for (sent, reply) in sent.into_iter().zip(replies) {
    let _ = reply.send(sent.await);
  }
}

/// Sends a tokio-postgres request now: it is sent on its future's first
/// poll, so this polls it once (with a waker that does nothing; awaiting
/// [`Sent`] later polls it with the real one). Calling this for several
/// requests in a row sends them back to back, in that order.
fn send_now<F: Future>(future: F) -> Sent<F> {
  let mut future = Box::pin(future);
  match future
    .as_mut()
    .poll(&mut Context::from_waker(Waker::noop()))
  {
    Poll::Ready(output) => Sent::Done(Some(output)),
    Poll::Pending => Sent::Waiting(future),
  }
}

/// A request already sent, whose answer is awaited.
enum Sent<F: Future> {
  Waiting(Pin<Box<F>>),
  Done(Option<F::Output>),
}

// The future is pinned in its box and the output is never pinned, so `Sent`
// can move freely.
impl<F: Future> Unpin for Sent<F> {}

impl<F: Future> Future for Sent<F> {
  type Output = F::Output;

  fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
    // Sent is Unpin: it holds the future boxed.
    match self.get_mut() {
      Sent::Waiting(future) => future.as_mut().poll(cx),
      Sent::Done(output) => Poll::Ready(output.take().expect("Sent polled after it finished")),
    }
  }
}
