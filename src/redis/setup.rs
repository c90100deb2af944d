//! Where a Redis server is and how a connection to it starts: endpoints
//! parsed from urls, connecting (TCP, TLS over TCP, unix sockets), the
//! handshake, and one-off exchanges on a fresh connection (topology
//! queries, sentinels).
//!
//! Nothing here knows what the stores send: the commands a new connection
//! must run before it carries calls (loading scripts) come from the caller
//! as a [`Greeting`].

use std::io;
use std::sync::Arc;

use ::redis::{Client, Cmd, ConnectionAddr, ConnectionInfo, Value};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::resp::{self, Scan};
use super::slots::Node;
use super::socket::Socket;
use crate::tls::{self, TlsSocket};

/// The `tls` option: whether it asks for TLS (a `rediss://` url does too),
/// the settings TLS connections use (see [`tls::client_config`]), and the
/// name certificates must carry when not the host's (`tls.servername`).
pub struct Tls {
  pub wanted: bool,
  pub config: Arc<ClientConfig>,
  pub server_name: Option<String>,
}

/// What follows the scheme of a url that asks for TLS (`rediss://` or
/// `valkeys://`, in any case), or `None` for any other url.
fn after_tls_scheme(url: &str) -> Option<&str> {
  let (scheme, rest) = url.split_once("://")?;
  (scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")).then_some(rest)
}

/// One server to connect to, with the credentials, database and TLS
/// settings to connect with.
#[derive(Clone)]
pub struct Endpoint {
  pub info: ConnectionInfo,
  /// Set when the connection is made over TLS.
  pub tls: Option<Arc<ClientConfig>>,
  /// The name the server's certificate must carry, when not its host.
  pub server_name: Option<String>,
}

impl Endpoint {
  /// Parses `url`; fails if it is malformed. The connection uses TLS when
  /// `tls` asks or the url's scheme does.
  pub fn parse(url: &str, tls: &Tls) -> Result<Endpoint, String> {
    // The redis crate parses TLS schemes only when built with its own TLS.
    let (plain_url, wants_tls) = match after_tls_scheme(url) {
      Some(rest) => (format!("redis://{rest}"), true),
      None => (url.to_owned(), false),
    };
    if wants_tls && plain_url.ends_with("#insecure") {
      return Err("#insecure (no certificate check) is not supported; pass tls: { ca } with the server's CA certificate".into());
    }
    let info = Client::open(plain_url.as_str())
      .map_err(|error| error.to_string())?
      .get_connection_info()
      .clone();
    let config = match (wants_tls || tls.wanted, info.addr()) {
      (false, _) => None,
      (true, ConnectionAddr::Tcp(..)) => Some(Arc::clone(&tls.config)),
      (true, _) => return Err("TLS works over TCP only, not a unix socket".into()),
    };
    Ok(Endpoint {
      info,
      tls: config,
      server_name: tls.server_name.clone(),
    })
  }

  /// Where the server is, for error messages (no credentials).
  pub fn address(&self) -> String {
    self.info.addr().to_string()
  }

  /// Another server of the same deployment (a cluster node, a primary a
  /// sentinel names), reached with these credentials and TLS settings.
  pub fn at(&self, node: &Node) -> Endpoint {
    Endpoint {
      info: self
        .info
        .clone()
        .set_addr(ConnectionAddr::Tcp(node.host.clone(), node.port)),
      tls: self.tls.clone(),
      server_name: self.server_name.clone(),
    }
  }

  /// `url` asks for TLS by its scheme.
  pub fn asks_tls(url: &str) -> bool {
    after_tls_scheme(url).is_some()
  }

  /// The url gave a password (and perhaps a user name).
  pub fn has_credentials(&self) -> bool {
    self.info.redis_settings().password().is_some()
  }

  /// The node of a TCP endpoint.
  pub fn node(&self) -> Option<Node> {
    match self.info.addr() {
      ConnectionAddr::Tcp(host, port) => Some(Node {
        host: host.clone(),
        port: *port,
      }),
      _ => None,
    }
  }

  /// The host of a TCP endpoint.
  pub fn host(&self) -> Option<&str> {
    match self.info.addr() {
      ConnectionAddr::Tcp(host, _) => Some(host),
      _ => None,
    }
  }

  pub fn db(&self) -> i64 {
    self.info.redis_settings().db()
  }

  /// These credentials and database instead of the url's, where given.
  pub fn with(
    mut self,
    username: Option<&str>,
    password: Option<&str>,
    db: Option<i64>,
  ) -> Endpoint {
    let mut settings = self.info.redis_settings().clone();
    if let Some(username) = username {
      settings = settings.set_username(username);
    }
    if let Some(password) = password {
      settings = settings.set_password(password);
    }
    if let Some(db) = db {
      settings = settings.set_db(db);
    }
    self.info = self.info.set_redis_settings(settings);
    self
  }
}

/// What a new connection runs before it carries calls, after AUTH and
/// SELECT as its endpoint asks.
#[derive(Default)]
pub struct Greeting {
  /// What the server must be.
  pub role: Role,
  /// Speak RESP3 and have the server track the keys read after
  /// `CLIENT CACHING yes`, for a near cache (Redis 6 or later).
  pub tracking: bool,
  /// Commands whose failure is not fatal, such as loading the scripts the
  /// calls will run (a call that finds its script missing resends it).
  pub setup: Vec<Cmd>,
}

/// What a server must be for a connection to carry calls.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub enum Role {
  /// Anything (a cluster's nodes, whose slots are checked by the cluster).
  #[default]
  Any,
  /// Not a cluster node: a url naming one would reach a third of the keys.
  Standalone,
  /// A primary, not a replica (a sentinel may name a demoted one during a
  /// failover); a server that will not say is taken as one.
  Primary,
}

impl Role {
  /// The command that tells, if any.
  fn question(self) -> Option<Cmd> {
    match self {
      Role::Any => None,
      Role::Standalone => Some(::redis::cmd("CLUSTER").arg("MYID").clone()),
      Role::Primary => Some(::redis::cmd("ROLE")),
    }
  }

  /// Why the server at `address`, which answered `answer`, will not do.
  fn refusal(self, answer: &Value, address: &str) -> Option<String> {
    match (self, answer) {
      // Only a cluster node has an id; anything else answers an error.
      (Role::Standalone, Value::BulkString(_)) => Some(format!(
        "this is a Redis Cluster node: pass cluster: {{ nodes: ['redis://{address}'] }} instead of url"
      )),
      (Role::Primary, Value::Array(fields)) => match fields.first() {
        Some(Value::BulkString(role)) if role.as_slice() != b"master" => Some(format!(
          "this is a {}, not the primary",
          String::from_utf8_lossy(role)
        )),
        _ => None,
      },
      _ => None,
    }
  }
}

/// A connected stream, before it is handed to the pipeline.
enum Stream {
  Tcp(tokio::net::TcpStream),
  Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
  #[cfg(unix)]
  Unix(tokio::net::UnixStream),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Stream {
  fn io(&mut self) -> &mut dyn Io {
    match self {
      Stream::Tcp(stream) => stream,
      Stream::Tls(stream) => stream,
      #[cfg(unix)]
      Stream::Unix(stream) => stream,
    }
  }

  /// The stream as a non-blocking socket for the pipeline.
  fn into_socket(self) -> io::Result<Socket> {
    Ok(match self {
      Stream::Tcp(stream) => Socket::Tcp(stream.into_std()?),
      Stream::Tls(stream) => {
        let (tcp, session) = stream.into_inner();
        Socket::Tls(Box::new(TlsSocket::new(tcp.into_std()?, session)))
      }
      #[cfg(unix)]
      Stream::Unix(stream) => Socket::Unix(stream.into_std()?),
    })
  }
}

/// Connects to `endpoint` (TCP, then TLS if it asks).
async fn connect(endpoint: &Endpoint) -> Result<Stream, String> {
  let io_cause = |error: io::Error| error.to_string();
  match endpoint.info.addr() {
    ConnectionAddr::Tcp(host, port) => {
      let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(io_cause)?;
      stream.set_nodelay(true).map_err(io_cause)?;
      let Some(config) = &endpoint.tls else {
        return Ok(Stream::Tcp(stream));
      };
      let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
      let name = endpoint.server_name.as_deref().unwrap_or(host);
      let stream = connector
        .connect(tls::server_name(name)?, stream)
        .await
        .map_err(|error| format!("TLS handshake failed: {error}"))?;
      Ok(Stream::Tls(Box::new(stream)))
    }
    #[cfg(unix)]
    ConnectionAddr::Unix(path) => Ok(Stream::Unix(
      tokio::net::UnixStream::connect(path)
        .await
        .map_err(io_cause)?,
    )),
    other => Err(format!("unsupported address {other}")),
  }
}

/// Opens a connection to `endpoint` and runs the handshake: AUTH and SELECT
/// as the endpoint asks (either failing fails the connection), then the
/// greeting's setup commands.
pub async fn open(endpoint: &Endpoint, greeting: &Greeting) -> Result<Socket, String> {
  let mut stream = connect(endpoint).await?;
  let mut commands = credentials(&endpoint.info);
  let checked = commands.len();
  if greeting.tracking {
    commands.push(::redis::cmd("HELLO").arg(3).clone());
    commands.push(
      ::redis::cmd("CLIENT")
        .arg(&["TRACKING", "ON", "OPTIN", "NOLOOP"])
        .clone(),
    );
  }
  let tracking = commands.len();
  let question = greeting.role.question();
  commands.extend(question.iter().cloned());
  commands.extend(greeting.setup.iter().cloned());
  let answers = exchange(stream.io(), &commands).await?;
  for answer in &answers[..checked] {
    answer
      .clone()
      .extract_error()
      .map_err(|error| error.to_string())?;
  }
  for answer in &answers[checked..tracking] {
    answer.clone().extract_error().map_err(|error| {
      format!("nearCache needs Redis 6 or later (RESP3 and CLIENT TRACKING): {error}")
    })?;
  }
  if question.is_some() {
    if let Some(refusal) = greeting
      .role
      .refusal(&answers[tracking], &endpoint.address())
    {
      return Err(refusal);
    }
  }
  stream.into_socket().map_err(|error| error.to_string())
}

/// Connects to `endpoint`, authenticates, sends `commands` and answers
/// what the server said to each; the connection is closed after.
pub async fn ask(endpoint: &Endpoint, commands: &[Cmd]) -> Result<Vec<Value>, String> {
  let mut stream = connect(endpoint).await?;
  let mut all = credentials(&endpoint.info);
  let checked = all.len();
  all.extend(commands.iter().cloned());
  let mut answers = exchange(stream.io(), &all).await?;
  for answer in answers.drain(..checked) {
    answer.extract_error().map_err(|error| error.to_string())?;
  }
  Ok(answers)
}

/// A connection subscribed to pub/sub channels, for their messages.
pub struct Subscription {
  stream: Stream,
  inbox: Inbox,
}

impl Subscription {
  /// Connects to `endpoint`, authenticates and subscribes to `channels`.
  pub async fn open(endpoint: &Endpoint, channels: &[&str]) -> Result<Subscription, String> {
    let mut stream = connect(endpoint).await?;
    let mut commands = credentials(&endpoint.info);
    let checked = commands.len();
    commands.push(::redis::cmd("SUBSCRIBE").arg(channels).clone());
    let mut answers = exchange(stream.io(), &commands).await?;
    for answer in answers.drain(..checked) {
      answer.extract_error().map_err(|error| error.to_string())?;
    }
    answers
      .remove(0)
      .extract_error()
      .map_err(|error| error.to_string())?;
    Ok(Subscription {
      stream,
      inbox: Inbox::default(),
    })
  }

  /// The next message: its channel and payload.
  pub async fn next(&mut self) -> Result<(Vec<u8>, Vec<u8>), String> {
    loop {
      // A message is ["message", channel, payload]; anything else (the
      // confirmations of the other channels) is skipped.
      if let Value::Array(fields) = self.inbox.next(self.stream.io()).await? {
        if let [Value::BulkString(kind), Value::BulkString(channel), Value::BulkString(payload)] =
          fields.as_slice()
        {
          if kind.as_slice() == b"message" {
            return Ok((channel.clone(), payload.clone()));
          }
        }
      }
    }
  }
}

/// AUTH and SELECT as `info` asks.
fn credentials(info: &ConnectionInfo) -> Vec<Cmd> {
  let settings = info.redis_settings();
  let mut commands = Vec::new();
  if let Some(password) = settings.password() {
    let mut auth = ::redis::cmd("AUTH");
    if let Some(username) = settings.username() {
      auth.arg(username);
    }
    auth.arg(password);
    commands.push(auth);
  }
  if settings.db() != 0 {
    let mut select = ::redis::cmd("SELECT");
    select.arg(settings.db());
    commands.push(select);
  }
  commands
}

/// Sends `commands` in one write and reads their answers (server errors
/// included, as values).
async fn exchange(io: &mut dyn Io, commands: &[Cmd]) -> Result<Vec<Value>, String> {
  let mut bytes = Vec::new();
  for command in commands {
    command.write_packed_command(&mut bytes);
  }
  io.write_all(&bytes)
    .await
    .map_err(|error| error.to_string())?;
  let mut inbox = Inbox::default();
  let mut answers = Vec::with_capacity(commands.len());
  for _ in commands {
    answers.push(inbox.next(io).await?);
  }
  Ok(answers)
}

/// Replies read from a stream one at a time.
#[derive(Default)]
struct Inbox {
  bytes: Vec<u8>,
  at: usize,
}

impl Inbox {
  async fn next(&mut self, io: &mut dyn Io) -> Result<Value, String> {
    loop {
      match resp::scan(&self.bytes[self.at..])
        .map_err(|error| format!("protocol error: {}", error.0))?
      {
        Scan::Complete(length) => {
          let value = resp::decode(&self.bytes[self.at..self.at + length])
            .map_err(|error| error.to_string())?;
          self.at += length;
          return Ok(value);
        }
        Scan::Partial(_) => {
          let mut chunk = [0; 4096];
          let n = io
            .read(&mut chunk)
            .await
            .map_err(|error| error.to_string())?;
          if n == 0 {
            return Err("the server closed the connection".into());
          }
          self.bytes.drain(..self.at);
          self.at = 0;
          self.bytes.extend_from_slice(&chunk[..n]);
        }
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn tls_schemes_are_recognised_in_any_case() {
    assert_eq!(after_tls_scheme("rediss://h:6380/0"), Some("h:6380/0"));
    assert_eq!(after_tls_scheme("REDISS://h"), Some("h"));
    assert_eq!(after_tls_scheme("valkeys://h"), Some("h"));
    assert_eq!(after_tls_scheme("redis://h"), None);
    assert_eq!(after_tls_scheme("unix:///tmp/redis.sock"), None);
  }

  #[test]
  fn credentials_follow_the_url() {
    let plain = Tls {
      wanted: false,
      config: tls::client_config(&tls::Trust::default()).unwrap(),
      server_name: None,
    };
    let commands = |url: &str| {
      let endpoint = Endpoint::parse(url, &plain).unwrap();
      credentials(&endpoint.info)
        .iter()
        .map(|command| String::from_utf8_lossy(&command.get_packed_command()).replace("\r\n", " "))
        .collect::<Vec<_>>()
    };
    assert!(commands("redis://127.0.0.1:6379").is_empty());
    assert_eq!(
      commands("redis://:pw@h/2"),
      ["*2 $4 AUTH $2 pw ", "*2 $6 SELECT $1 2 "]
    );
    assert_eq!(commands("redis://u:pw@h"), ["*3 $4 AUTH $1 u $2 pw "]);
  }
}
