//! Amazon Web Services: ambient credentials and RDS IAM auth tokens.
//!
//! - [`credentials`]: the relay's credentials, found in the AWS SDKs' order (environment,
//!   web identity at STS, ECS/EKS container credentials, EC2 instance metadata with IMDSv2),
//!   cached until five minutes before they expire.
//! - [`clock_skew`]: the offset of the local clock from AWS's, learned from the `Date` of the
//!   credential endpoints' answers, as the AWS SDKs do.
//! - [`rds`]: the RDS auth token, a SigV4-presigned `connect` URL for `rds-db`, signed at
//!   AWS's time as learned.
//!
//! Every endpoint can be moved, so tests use local servers:
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `AWS_ENDPOINT_URL_STS` | `https://sts.REGION.amazonaws.com` | STS for web identity |
//! | `AWS_CONTAINER_CREDENTIALS_FULL_URI` | — | container credentials (ECS, EKS Pod Identity) |
//! | `AWS_EC2_METADATA_SERVICE_ENDPOINT` | `http://169.254.169.254` | instance metadata |
//!
//! Caching of RDS tokens per database user (with the corrected clock) lives with the relay's
//! RDS upstream, which decides when a session needs one.

pub mod clock_skew;
pub mod credentials;
pub mod rds;

pub use clock_skew::ClockSkew;
pub use credentials::{AwsCredentials, AwsEnv, Credentials, CredentialsError};
