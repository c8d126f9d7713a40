//! Ambient cloud credentials turned into database login tokens, for the relay's sessions and
//! `dbward plan --live` / `apply --live` (the compiler's `live/connect.rs`).
//!
//! The layers, bottom up:
//! - [`secret`]: [`Secret`], the redacting newtype every token, key and assertion lives in, so
//!   none reaches `Debug`, `Display`, an error or a log line.
//! - [`http`]: one small HTTP/1.1 client (hyper + rustls with ring + the webpki roots) that
//!   refuses to send a credential over plain HTTP except to loopback and the metadata server.
//! - [`cache`]: [`TokenCache`], tokens per key refreshed ahead of expiry in the background,
//!   shared by every session, concurrent misses coalesced into one fetch, refused tokens never
//!   reused. Cloud-neutral.
//! - [`gcp`]: Google — ambient credentials in Google's order, service-account impersonation
//!   (IAM Credentials `generateAccessToken`), and the Cloud SQL Admin API lookups.
//!
//! - [`aws`]: Amazon — ambient credentials in the AWS SDKs' order, the clock-skew correction
//!   learned from AWS's answers, and the RDS IAM auth token (SigV4).
//!
//! - [`azure`]: Microsoft — Entra ID tokens for Azure Database for PostgreSQL, one per
//!   principal, from the sources in the Azure SDKs' order (environment secret or certificate,
//!   workload identity, managed identity).
//!
//! Every endpoint of every cloud is configurable so tests run against local servers; see each
//! module's docs for the variables.
//!
//! **Invariant: no HTTP on a session's path in steady state** — sessions read the cache; only
//! a cold cache, or one whose background refresh failed until the token expired, fetches.

pub mod aws;
pub mod azure;
pub mod cache;
#[cfg(feature = "fake")]
pub mod fake_db;
pub mod gcp;
pub mod http;
pub mod secret;

pub use cache::{CacheFault, Token, TokenCache};
pub use secret::Secret;
