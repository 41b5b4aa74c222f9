//! The agent on each host of an environment with `servers` (docs/servers.md): the same
//! `ferry` binary, run by ssh as `ferry agent --dir D`.
//!
//! - [`protocol`]: the typed requests and answers (JSON lines) and their error kinds.
//! - [`relay`]: `ferry agent --dir D`, the stdio end ssh runs; starts the daemon when none
//!   answers, retires one of another build.
//! - [`daemon`]: `ferry agent --dir D --daemon`, which owns what runs on the host: per
//!   environment ([`env`]) the instances (through [`crate::runtime`], as `serve` runs them),
//!   a [`crate::proxy::Proxy`] on the environment's `listen` address and a state file; it
//!   adopts what a killed or retired daemon left running.
//! - [`receive`]: `ferry agent --dir D receive …`, a release arriving as a tar stream,
//!   checked against its digest.
//! - [`client`]: ferry's end: [`Agent`] (one async method per request) and
//!   [`Agent::ship`]. It knows nothing of ssh: it runs whatever command it is given.
//! - `state`: an environment's state file on a host.
//! - `ship`: the sending end of a release (manifest line, tar stream).
//! - [`files`]: the agent dir's layout, release records and trees.

pub mod client;
pub mod daemon;
mod env;
pub mod files;
pub mod protocol;
pub mod receive;
pub mod relay;
mod ship;
mod state;

pub use client::{Agent, AgentError, ShipReport, receive_args};
pub use protocol::{ErrorKind, HealthRequest, InstanceId, SecretVars, StartRequest, TaskRequest};
