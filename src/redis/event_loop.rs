//! Whether the JS thread's event loop has other work waiting (Node only).
//!
//! A flush polls for its answers only while nothing else is ready: in a busy
//! server the JS thread has requests to serve instead, and the answers are
//! taken by a later flush or by the watcher. Node's loop is libuv, whose
//! epoll descriptor reports "readable" while any watched socket or pipe is;
//! we find it through N-API and libuv's exported `uv_backend_fd`, looked up
//! at run time so that Bun and Deno (which lack it) still load the addon.

use napi::{sys, Env};

pub struct EventLoop {
  #[cfg(unix)]
  fd: libc::c_int,
}

impl EventLoop {
  /// The loop of the thread `env` belongs to, or `None` when it cannot be
  /// watched (not Node, or not a Unix).
  pub fn of(env: &Env) -> Option<Self> {
    #[cfg(unix)]
    {
      type BackendFd = unsafe extern "C" fn(*mut sys::uv_loop_s) -> libc::c_int;
      let mut uv_loop = std::ptr::null_mut();
      // SAFETY: `env` is the live env of this thread.
      let status = unsafe { sys::napi_get_uv_event_loop(env.raw(), &mut uv_loop) };
      if status != sys::Status::napi_ok || uv_loop.is_null() {
        return None;
      }
      // SAFETY: a lookup by name in the symbols the process already loaded.
      let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"uv_backend_fd".as_ptr()) };
      if symbol.is_null() {
        return None;
      }
      // SAFETY: libuv's `int uv_backend_fd(const uv_loop_t*)`.
      let backend_fd: BackendFd =
        unsafe { std::mem::transmute::<*mut libc::c_void, BackendFd>(symbol) };
      // SAFETY: `uv_loop` is the loop N-API gave us for this thread.
      let fd = unsafe { backend_fd(uv_loop) };
      (fd >= 0).then_some(EventLoop { fd })
    }
    #[cfg(not(unix))]
    {
      let _ = env;
      None
    }
  }

  /// Some socket, pipe or signal of the loop is ready to be handled.
  pub fn has_work(&self) -> bool {
    #[cfg(unix)]
    {
      let mut watched = libc::pollfd {
        fd: self.fd,
        events: libc::POLLIN,
        revents: 0,
      };
      // SAFETY: one valid pollfd, no wait.
      unsafe { libc::poll(&mut watched, 1, 0) > 0 }
    }
    #[cfg(not(unix))]
    false
  }
}
