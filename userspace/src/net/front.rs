//! The seam between a sandbox and the proxy that serves it: the sandbox
//! makes listeners and knows each connection's original destination; the
//! session, which built the proxy once for the run, hands it over as a
//! [`Front`]. So `sandbox/` never sees grants, the CA or the policy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::orig_dst::{NameLookup, OriginalDst};

/// A future a front door runs until its listener fails or the runtime stops.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Moat's proxy, as a sandbox sees it.
pub trait Front: Send + Sync {
    /// Serve redirected connections accepted on `listener`: each one's
    /// destination from `dst`, the names the sandbox resolved from `names`.
    fn transparent(
        self: Arc<Self>,
        listener: TcpListener,
        dst: Arc<dyn OriginalDst>,
        names: Option<NameLookup>,
    ) -> Serving;

    /// Serve as an explicit HTTP proxy on `listener`, for clients that
    /// present `password` (env mode).
    fn explicit(self: Arc<Self>, listener: TcpListener, password: String) -> Serving;
}
