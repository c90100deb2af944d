//! A connected socket (TCP, TLS over TCP, or a unix socket), read and
//! written without blocking from any thread, and the duplicate the I/O
//! thread waits on.

use std::io::{self, Read, Write};

use tokio::io::Interest;

use crate::tls::TlsSocket;

pub enum Socket {
  Tcp(std::net::TcpStream),
  // Boxed: a TLS session is ~1 KiB, the plain sockets a few bytes.
  Tls(Box<TlsSocket>),
  #[cfg(unix)]
  Unix(std::os::unix::net::UnixStream),
}

impl Socket {
  pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
    match self {
      Socket::Tcp(stream) => (&*stream).read(buf),
      Socket::Tls(stream) => stream.read(buf),
      #[cfg(unix)]
      Socket::Unix(stream) => (&*stream).read(buf),
    }
  }

  pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
    match self {
      Socket::Tcp(stream) => (&*stream).write(buf),
      Socket::Tls(stream) => stream.write(buf),
      #[cfg(unix)]
      Socket::Unix(stream) => (&*stream).write(buf),
    }
  }

  /// Sends what a TLS session still holds (`WouldBlock` if some must wait).
  pub fn flush(&self) -> io::Result<()> {
    match self {
      Socket::Tls(stream) => stream.flush(),
      _ => Ok(()),
    }
  }

  /// Bytes wait in a TLS session for room in the socket.
  pub fn wants_write(&self) -> bool {
    matches!(self, Socket::Tls(stream) if stream.wants_write())
  }

  /// Tells the server we are gone now, even while a watcher still holds a
  /// duplicate of the socket.
  pub fn shut_down(&self) {
    let _ = match self {
      Socket::Tcp(stream) => stream.shutdown(std::net::Shutdown::Both),
      Socket::Tls(stream) => stream.tcp.shutdown(std::net::Shutdown::Both),
      #[cfg(unix)]
      Socket::Unix(stream) => stream.shutdown(std::net::Shutdown::Both),
    };
  }

  /// A duplicate registered with the I/O thread's reactor, to wait on. It
  /// is registered only while answers are awaited: registered for good, the
  /// reactor would wake for every answer the JS thread already took.
  pub fn watcher(&self) -> io::Result<Watcher> {
    Ok(match self {
      Socket::Tcp(stream) => Watcher::Tcp(tokio::net::TcpStream::from_std(stream.try_clone()?)?),
      Socket::Tls(stream) => {
        Watcher::Tcp(tokio::net::TcpStream::from_std(stream.tcp.try_clone()?)?)
      }
      #[cfg(unix)]
      Socket::Unix(stream) => Watcher::Unix(tokio::net::UnixStream::from_std(stream.try_clone()?)?),
    })
  }
}

pub enum Watcher {
  Tcp(tokio::net::TcpStream),
  #[cfg(unix)]
  Unix(tokio::net::UnixStream),
}

impl Watcher {
  /// Waits until the socket is ready for some of `interest`; answers the
  /// one direction to act on (tokio's `try_io` takes a single one).
  pub async fn ready(&self, interest: Interest) -> io::Result<Interest> {
    let ready = match self {
      Watcher::Tcp(stream) => stream.ready(interest).await?,
      #[cfg(unix)]
      Watcher::Unix(stream) => stream.ready(interest).await?,
    };
    Ok(
      if ready.is_readable() || ready.is_read_closed() || !interest.is_writable() {
        Interest::READABLE
      } else {
        Interest::WRITABLE
      },
    )
  }

  /// Runs `io`, clearing the readiness it saw if it ends with `WouldBlock`
  /// (done inside tokio's `try_io`, so readiness that arrives meanwhile is
  /// not lost).
  pub fn try_io<R>(&self, interest: Interest, io: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
    match self {
      Watcher::Tcp(stream) => stream.try_io(interest, io),
      #[cfg(unix)]
      Watcher::Unix(stream) => stream.try_io(interest, io),
    }
  }
}
