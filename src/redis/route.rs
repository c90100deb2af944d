//! Which server each call goes to: the one server of a url (or the primary
//! its sentinels name), or, in a cluster, the primary serving its key's slot.

use std::sync::Arc;

use super::cluster::Cluster;
use super::event_loop::EventLoop;
use super::job::Job;
use super::replies::{Replies, Reply};
use super::sentinel::{self, Sentinels};
use super::setup::{Endpoint, Role, Tls};
use super::wire::{self, Settings, Target, Wire};

/// Where an adapter's data lives, as its options say.
pub enum Deployment<'a> {
  /// One server, at this url.
  Server { url: &'a str },
  /// A Redis Cluster, reached through these seed urls.
  Cluster { nodes: &'a [String] },
  /// A primary the sentinels at these urls know by `name`; `username`,
  /// `password` (over their urls') and `tls` are the sentinels' own.
  Sentinel {
    name: &'a str,
    nodes: &'a [String],
    username: Option<&'a str>,
    password: Option<&'a str>,
    tls: Option<&'a Tls>,
  },
}

/// Credentials and database for the servers holding the data, over what
/// their urls say.
pub struct Login<'a> {
  pub username: Option<&'a str>,
  pub password: Option<&'a str>,
  pub db: Option<i64>,
}

pub enum Route {
  One(Arc<Wire>),
  Cluster(Arc<Cluster>),
}

impl Route {
  /// Parses the deployment's urls and starts connecting in the background.
  /// An error names the option at fault (`url: …`, `cluster.nodes[1]: …`).
  pub fn open(
    deployment: &Deployment,
    login: &Login,
    tls: &Tls,
    mut settings: Settings,
    replies: Arc<Replies>,
  ) -> Result<Route, String> {
    let with_login = |endpoint: Endpoint| endpoint.with(login.username, login.password, login.db);
    match deployment {
      Deployment::Server { url } => {
        let endpoint = Endpoint::parse(url, tls).map_err(|error| format!("url: {error}"))?;
        settings.greeting.role = Role::Standalone;
        let wire = Wire::new(
          Target::Fixed(with_login(endpoint)),
          Arc::new(settings),
          replies,
          None,
        );
        wire.connect_in_background();
        Ok(Route::One(wire))
      }
      Deployment::Cluster { nodes } => {
        if login.db.is_some_and(|db| db != 0) {
          return Err("db: a Redis Cluster has only database 0".into());
        }
        let seeds = cluster_seeds(nodes, tls)?
          .into_iter()
          .map(with_login)
          .collect();
        Ok(Route::Cluster(Cluster::start(
          seeds,
          Arc::new(settings),
          replies,
        )))
      }
      Deployment::Sentinel {
        name,
        nodes,
        username,
        password,
        tls: own_tls,
      } => {
        // Sentinels speak TLS when `sentinel.tls` or their urls say so
        // (with the `tls` option's certificates, without their own); the
        // primary when the `tls` option does.
        let borrowed = Tls {
          wanted: false,
          config: Arc::clone(&tls.config),
          server_name: None,
        };
        let sentinel_tls = own_tls.unwrap_or(&borrowed);
        let mut sentinels = Vec::with_capacity(nodes.len());
        for (index, url) in nodes.iter().enumerate() {
          let endpoint = Endpoint::parse(url, sentinel_tls)
            .ok()
            .filter(|endpoint| endpoint.host().is_some())
            .ok_or_else(|| format!("sentinel.nodes[{index}]: not a redis://host:port url"))?;
          sentinels.push(endpoint.with(*username, *password, None));
        }
        if sentinels.is_empty() {
          return Err("sentinel.nodes: at least one sentinel is needed".into());
        }
        // Where the primary is comes from the sentinels; the placeholder
        // address is replaced each time.
        let primary = with_login(Endpoint::parse("redis://127.0.0.1", tls)?);
        settings.greeting.role = Role::Primary;
        let sentinels = Arc::new(Sentinels::new(
          (*name).to_owned(),
          sentinels,
          primary,
          settings.connect_timeout,
        ));
        let wire = Wire::new(
          Target::Sentinel(Arc::clone(&sentinels)),
          Arc::new(settings),
          replies,
          None,
        );
        wire.connect_in_background();
        sentinel::follow(&sentinels, &wire);
        Ok(Route::One(wire))
      }
    }
  }

  /// The cluster hash slot of `key` (0 when there is no cluster).
  pub fn slot(&self, key: &str) -> u16 {
    match self {
      Route::One(_) => 0,
      Route::Cluster(_) => Cluster::slot(key),
    }
  }

  /// Queues `job` (on the JS thread) until the next flush.
  pub fn submit(&self, job: Job) {
    match self {
      Route::One(wire) => wire.submit(job),
      Route::Cluster(cluster) => {
        cluster.submit(job);
      }
    }
  }

  /// Sends `job` from a thread other than the JS thread: at once, its
  /// answer delivered through the replies.
  pub fn send_elsewhere(&self, job: Job) {
    let wire = match self {
      Route::One(wire) => {
        wire.submit(job);
        Some(Arc::clone(wire))
      }
      Route::Cluster(cluster) => cluster.submit(job),
    };
    if let Some(wire) = wire {
      wire.flush_elsewhere();
    }
  }

  /// See [`wire::flush`].
  pub fn flush(&self, spin: bool, defer: bool, events: Option<&EventLoop>) -> Vec<(f64, Reply)> {
    match self {
      Route::One(wire) => wire::flush(std::slice::from_ref(wire), spin, defer, events),
      Route::Cluster(cluster) => cluster.flush(spin, defer, events),
    }
  }

  /// See [`wire::write_early`].
  pub fn write_early(&self) -> Vec<(f64, Reply)> {
    match self {
      Route::One(wire) => wire::write_early(std::slice::from_ref(wire)),
      Route::Cluster(cluster) => cluster.write_early(),
    }
  }

  /// Some answers are left for the JS thread's next flush.
  pub fn awaiting(&self) -> bool {
    match self {
      Route::One(wire) => wire.awaiting(),
      Route::Cluster(cluster) => cluster.awaiting(),
    }
  }

  /// Refuses later calls; each connection closes once its calls are answered.
  pub fn close(&self) {
    match self {
      Route::One(wire) => wire.close(),
      Route::Cluster(cluster) => cluster.close(),
    }
  }

  pub fn is_closed(&self) -> bool {
    match self {
      Route::One(wire) => wire.is_closed(),
      Route::Cluster(cluster) => cluster.is_closed(),
    }
  }
}

/// The seed endpoints of a cluster: each url parsed, all over TLS if one
/// asks, all with the credentials the first that has any gives (every node
/// of a cluster takes the same), and database 0, the only one a cluster has.
fn cluster_seeds(urls: &[String], tls: &Tls) -> Result<Vec<Endpoint>, String> {
  if urls.is_empty() {
    return Err("cluster.nodes: at least one node is needed".into());
  }
  let name = |index: usize| format!("cluster.nodes[{index}]");
  let tls = Tls {
    wanted: tls.wanted || urls.iter().any(|url| Endpoint::asks_tls(url)),
    config: Arc::clone(&tls.config),
    server_name: tls.server_name.clone(),
  };
  let mut seeds = Vec::with_capacity(urls.len());
  for (index, url) in urls.iter().enumerate() {
    let endpoint =
      Endpoint::parse(url, &tls).map_err(|error| format!("{}: {error}", name(index)))?;
    if endpoint.host().is_none() {
      return Err(format!(
        "{}: cluster nodes are reached over TCP, not a unix socket",
        name(index)
      ));
    }
    if endpoint.db() != 0 {
      return Err(format!(
        "{}: a Redis Cluster has only database 0; remove the database from the url",
        name(index)
      ));
    }
    seeds.push(endpoint);
  }
  let template = seeds
    .iter()
    .find(|seed| seed.has_credentials())
    .unwrap_or(&seeds[0])
    .clone();
  Ok(
    seeds
      .iter()
      .map(|seed| template.at(&seed.node().expect("checked above")))
      .collect(),
  )
}
