//! Moat: run AI agents with credentials they never see.
//!
//! The library holds everything; `main.rs` only parses the command line and
//! calls [`cli::main`]. Pure logic (providers, crypto, config parsing) lives in
//! modules that know nothing of sockets or namespaces and is unit-tested
//! without privileges.

pub mod agents;
pub mod aws;
pub mod cli;
pub mod config;
pub mod events;
pub mod home;
pub mod net;
pub mod providers;
pub mod proxy;
pub mod runs;
pub mod sandbox;
pub mod secrets;
pub mod session;
pub mod ssh;
pub mod store;
