//! The relay's runtime state, shared by the listener, every session and the operations code.
//!
//! [`Shared`] lives for the whole process. Its [`Loaded`] config is swapped as a whole on reload
//! (SIGHUP): a session takes one snapshot when it starts and keeps it to its end, and new ones
//! use the new config; a reload affects a session in flight only by ending it when the new config
//! no longer allows it ([`crate::revoke`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use dbward_frozen::Config;

use crate::audit::AuditSink;
use crate::cancel::CancelMap;
use crate::metrics::Metrics;
use crate::peer::{PeerSet, Peering};
use crate::tls::{ServerTls, TlsError};
use crate::upstream::Upstream;
use dbward_cloud::aws::{AwsCredentials, AwsEnv};

/// A frozen config together with everything built from it once per load: TLS configs and
/// upstream targets. Never mutated; replaced whole on reload.
#[derive(Debug)]
pub struct Loaded {
    /// Where the config was read from; relative paths inside it resolve against its directory.
    pub path: PathBuf,
    pub config: Config,
    /// What clients meet.
    pub server_tls: ServerTls,
    /// How to reach each database, by manifest name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// The relay's replicas and their TLS, with `relay { peers … }`.
    pub peers: Option<PeerSet>,
}

impl Loaded {
    /// Builds the TLS configs and upstream targets of a verified config read from `path`.
    /// Fails when a certificate, key or CA cannot be read or used.
    pub fn build(path: &Path, config: Config) -> Result<Loaded, TlsError> {
        let resolve = |p: &Path| Config::resolve_path(path, p);
        let tls = &config.relay.tls;
        let server_tls = ServerTls::build(
            &resolve(&tls.cert),
            &resolve(&tls.key),
            &resolve(&tls.client_ca),
        )?;
        // RDS credentials come from this process's environment, read once per load.
        let aws = Arc::new(AwsCredentials::new(AwsEnv::from_process()));
        // So do Cloud SQL's Google variables.
        let gcp = dbward_cloud::gcp::GcpEnv::from_process();
        let mut upstreams = BTreeMap::new();
        for (name, database) in &config.databases {
            upstreams.insert(
                name.clone(),
                Upstream::build(path, &config, name, database, &aws, &gcp)?,
            );
        }
        let peers = config
            .relay
            .peers
            .as_ref()
            .map(|peers| PeerSet::build(path, peers))
            .transpose()?;
        Ok(Loaded {
            path: path.to_owned(),
            config,
            server_tls,
            upstreams,
            peers,
        })
    }

    /// The same config with RDS tokens signed from `aws` rather than from the process's
    /// environment (tests and embedders inject credential sources this way).
    pub fn with_aws_credentials(mut self, aws: Arc<AwsCredentials>) -> Loaded {
        for upstream in self.upstreams.values_mut() {
            *upstream = upstream.with_aws_credentials(&aws);
        }
        self
    }

    /// The same config with Cloud SQL tokens and lookups through the Google variables `env`
    /// rather than the process's environment.
    pub fn with_gcp_env(mut self, env: dbward_cloud::gcp::GcpEnv) -> Loaded {
        for upstream in self.upstreams.values_mut() {
            *upstream = upstream.with_gcp_env(&env);
        }
        self
    }

    /// The same config with Azure tokens from the variables `env` rather than the process's
    /// environment, refreshed by `policy`.
    pub fn with_azure_env(
        mut self,
        env: dbward_cloud::azure::AzureEnv,
        policy: dbward_cloud::azure::Policy,
    ) -> Loaded {
        for upstream in self.upstreams.values_mut() {
            *upstream = upstream.with_azure_env(&env, policy);
        }
        self
    }
}

/// State shared by the whole process.
#[derive(Debug)]
pub struct Shared {
    /// The config in force; swap it with [`Shared::replace_config`] to reload.
    pub config: ArcSwap<Loaded>,
    /// Relay-issued cancel keys of the sessions alive now.
    pub cancel: CancelMap,
    /// This replica's peer id, and the checks on cancels other replicas forward to it.
    pub peering: Peering,
    pub audit: AuditSink,
    pub metrics: Metrics,
    /// Warm admin connections of provisioning databases.
    pub admin_pool: crate::provision::AdminPool,
    /// The sessions relaying now, checked again on every reload ([`crate::revoke`]).
    pub live: crate::revoke::LiveSessions,
    /// Source of session ids.
    next_session_id: AtomicU64,
    /// Connections the open-file limit leaves room for ([`crate::listener::FdBudget`]);
    /// `usize::MAX` until the binary derives it (in-process embedders keep their own limits).
    descriptor_cap: AtomicUsize,
}

impl Shared {
    pub fn new(loaded: Loaded, audit: AuditSink, metrics: Metrics) -> Shared {
        Shared {
            config: ArcSwap::from_pointee(loaded),
            cancel: CancelMap::default(),
            peering: Peering::new(None),
            audit,
            metrics,
            admin_pool: crate::provision::AdminPool::default(),
            live: crate::revoke::LiveSessions::default(),
            next_session_id: AtomicU64::new(1),
            descriptor_cap: AtomicUsize::new(usize::MAX),
        }
    }

    /// The same state for the replica with peer id `id` (`relay { peers … }`): its cancel keys
    /// carry the id, and it serves cancels the other replicas forward.
    pub fn with_peer_id(mut self, id: Option<u16>) -> Shared {
        self.cancel = CancelMap::with_peer_id(id);
        self.peering = Peering::new(id);
        self
    }

    /// Caps the connection limit at what the open-file limit leaves room for.
    pub fn cap_connections(&self, cap: usize) {
        self.descriptor_cap.store(cap, Ordering::Relaxed);
    }

    /// The connection limit in force: the config's `limits.max_connections`, or the descriptor
    /// cap when that is lower.
    pub fn connection_limit(&self) -> usize {
        let configured = self.current().config.relay.limits.max_connections as usize;
        configured.min(self.descriptor_cap.load(Ordering::Relaxed))
    }

    /// The config new sessions use now.
    pub fn current(&self) -> Arc<Loaded> {
        self.config.load_full()
    }

    /// Makes `loaded` the config of every session that starts from now on.
    pub fn replace_config(&self, loaded: Loaded) {
        self.config.store(Arc::new(loaded));
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}
