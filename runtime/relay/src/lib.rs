//! dbward-relay: a small, fast PostgreSQL relay that executes a dbward frozen config.
//!
//! The life of a connection, as code:
//! [`run`] accepts it → [`session::handle`] negotiates TLS (answering SSLRequest/GSSENCRequest,
//! or direct TLS with ALPN) → checks the client certificate ([`tls::ClientCertCheck`]) → decides
//! from the compiled access table (`session::decide`) → opens the upstream
//! ([`upstream::connect`]: mutual TLS, or an RDS IAM token as the password) → completes the client's startup with a relay-issued
//! cancel key ([`cancel::CancelMap`]) → relays bytes ([`session::relay`]) until either side ends.
//!
//! **Invariants**
//! - **No decision the compiler did not make**: access comes from `Config::access_for` only,
//!   and nothing is dialled upstream before it allows the session.
//! - **One config per session**: a session keeps the [`state::Loaded`] snapshot it started with;
//!   a reload (SIGHUP) affects only sessions that start after it.
//! - **After startup, bytes are relayed, not decoded** (frame headers are followed only to
//!   record queries when the audit log asks for them).
//!
//! Modules:
//! - [`state`]: the shared runtime state ([`state::Shared`], [`state::Loaded`]).
//! - [`tls`]: rustls configs for clients and upstreams, built once per config load;
//!   [`verified`]: chains verified before, so a returning certificate is not verified again.
//! - [`protocol`]: the PostgreSQL messages the relay reads and writes.
//! - [`readahead`]: large socket reads during bulk transfers, none held while idle.
//! - [`listener`]: the accept loop and connection limit; [`session`]: one client connection.
//! - [`upstream`]: how to reach and authenticate to each database (one module per method:
//!   [`upstream::mtls`]; [`upstream::rds`] caching SigV4 tokens signed by
//!   [`dbward_cloud::aws`] with ambient credentials, injectable with
//!   [`state::Loaded::with_aws_credentials`], at AWS's time as learned from AWS's answers).
//! - [`cancel`]: relay-issued cancel keys and forwarding CancelRequests.
//! - [`peer`]: cancel forwarding between the replicas of one relay (`relay { peers … }`).
//! - [`audit`], [`metrics`], [`http`]: what the relay reports (audit log, Prometheus, probes).
//! - [`config`], [`ops`], [`logging`], [`notify`]: loading and verifying the config, signals and
//!   drain, systemd readiness notifications, log output — what the `dbward-relay` binary runs;
//!   [`replica`]: which process of a fleet this is, named in every audit event.

pub mod audit;
pub mod cancel;
pub mod config;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod peer;
pub mod protocol;
pub mod provision;
pub mod readahead;
pub mod replica;
pub mod revoke;
pub mod session;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod verified;

pub use listener::run;
