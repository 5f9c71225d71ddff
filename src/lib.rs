//! inbound: the MX for hosted team inboxes.
//!
//! Modules in the order a message flows through them:
//! - [`server`]: TCP accept, PROXY protocol, TLS, shutdown, the admin socket
//! - [`smtp`]: the ESMTP session, DATA/BDAT decoding, replies
//! - [`limits`]: connection, rate, size and time caps
//! - [`pipeline`]: the stages run on a finished message (parse, …)
//! - [`store`]: durable commit (spool files + sled, group commit) and recovery
//! - [`notify`]: the outbox written in those commits, and its worker (relay mail, webhooks)
//!
//! Around them: [`config`] (TOML -> validated -> compiled, reloaded by `server::reload`),
//! [`metrics`] (counters for Prometheus), [`cli`] (the `inbound` command), [`api`] (the HTTP
//! API: reads and operator actions), [`views`] (the JSON shapes the API, the CLI's `--json` and
//! the webhooks share: one vocabulary), [`actions`] (what every operator action changes in the
//! store, one transaction each), `bench` (the load generator behind `inbound bench`,
//! compiled only with the `bench` feature), `fuzzing` (the fuzzers' harnesses, with the
//! `fuzzing` feature only).

pub mod actions;
pub mod api;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod context;
pub mod dns;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod server;
pub mod smtp;
pub mod store;
pub mod util;
pub mod views;
