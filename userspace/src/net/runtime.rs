//! The runtime the proxy is served on, from threads of its own: callers
//! block on the sandboxed command (or a signal) meanwhile.
//!
//! One worker is a current-thread runtime driven by a dedicated thread; more
//! are a multi-thread runtime. On a small machine the proxy shares the CPUs
//! with the command and the servers it talks to, and there a single
//! current-thread worker serves keep-alive traffic 8–22 % faster than a
//! one-worker multi-thread runtime (no work-stealing bookkeeping on every
//! wake-up), which itself beat two workers (docs/performance.md).

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, EnterGuard, Handle, Runtime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle as TaskHandle;

/// The proxy's runtime. [`ProxyRuntime::block_on`] may be called from any
/// thread outside it, several at once.
pub struct ProxyRuntime {
    handle: Handle,
    kind: Kind,
}

enum Kind {
    /// A current-thread runtime inside `Runtime::block_on` on its thread
    /// (which is what drives its I/O and timers) until told to stop.
    Single {
        stop: Option<oneshot::Sender<Duration>>,
        thread: Option<JoinHandle<()>>,
    },
    Multi(Option<Runtime>),
}

/// Worker threads: `MOAT_PROXY_THREADS=N`, else half the CPUs, at least 1 and
/// at most 4: the sandboxed command and the servers it talks to need the rest.
fn threads() -> usize {
    std::env::var("MOAT_PROXY_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| (n.get() / 2).clamp(1, 4))
                .unwrap_or(1)
        })
}

impl ProxyRuntime {
    /// [`threads`] workers.
    pub fn new() -> std::io::Result<Self> {
        Self::with_threads(threads())
    }

    pub fn with_threads(threads: usize) -> std::io::Result<Self> {
        if threads > 1 {
            let rt = Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("moat-proxy")
                .enable_all()
                .build()?;
            return Ok(Self {
                handle: rt.handle().clone(),
                kind: Kind::Multi(Some(rt)),
            });
        }
        let rt = Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<Duration>();
        let thread = std::thread::Builder::new()
            .name("moat-proxy".into())
            .spawn(move || {
                // A dropped sender (a panic on the caller's side) stops it too.
                let grace = rt.block_on(stopped).unwrap_or(Duration::ZERO);
                rt.shutdown_timeout(grace);
            })?;
        Ok(Self {
            handle,
            kind: Kind::Single {
                stop: Some(stop),
                thread: Some(thread),
            },
        })
    }

    /// Run `future` to completion on the calling thread; tasks it spawns,
    /// its I/O and its timers run on the proxy's threads.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        match &self.kind {
            Kind::Multi(Some(rt)) => rt.block_on(future),
            _ => self.handle.block_on(future),
        }
    }

    pub fn spawn<F>(&self, future: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Makes `tokio::spawn` and I/O objects' registration work on this
    /// thread while the guard lives.
    pub fn enter(&self) -> EnterGuard<'_> {
        self.handle.enter()
    }

    /// Stop: tasks still running are dropped after at most `grace`.
    pub fn shutdown_timeout(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        match &mut self.kind {
            Kind::Single { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(grace);
                }
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            Kind::Multi(rt) => {
                if let Some(rt) = rt.take() {
                    rt.shutdown_timeout(grace);
                }
            }
        }
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// The runtime the proxy is served on (see [`ProxyRuntime`]).
pub fn runtime() -> std::io::Result<ProxyRuntime> {
    ProxyRuntime::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Either kind serves I/O and timers while the caller is not in it, from
    /// `block_on` on any thread, and stops its tasks on shutdown.
    #[test]
    fn serves_while_the_caller_blocks_and_stops_on_shutdown() {
        for n in [1, 2] {
            let rt = ProxyRuntime::with_threads(n).unwrap();
            let listener = {
                let _in = rt.enter();
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(l).unwrap()
            };
            let addr = listener.local_addr().unwrap();
            let (dropped_tx, dropped_rx) = std::sync::mpsc::channel::<()>();
            rt.spawn(async move {
                let _dropped = Guard(dropped_tx);
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    tokio::io::AsyncWriteExt::write_all(&mut s, b"hi")
                        .await
                        .unwrap();
                }
            });
            // Plain blocking I/O on this thread: only the runtime's own
            // threads can be serving it.
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut got = [0u8; 2];
            std::io::Read::read_exact(&mut s, &mut got).unwrap();
            assert_eq!(&got, b"hi", "{n} thread(s)");
            // block_on from another thread, with a timer.
            let rt = std::sync::Arc::new(rt);
            let other = std::sync::Arc::clone(&rt);
            let v = std::thread::spawn(move || {
                other.block_on(async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    7
                })
            })
            .join()
            .unwrap();
            assert_eq!(v, 7);
            let rt = std::sync::Arc::into_inner(rt).unwrap();
            rt.shutdown_timeout(Duration::from_millis(100));
            dropped_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("the accept loop is dropped at shutdown");
        }
    }

    struct Guard(std::sync::mpsc::Sender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
}
