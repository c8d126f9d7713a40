//! The end-to-end suite: one test binary, so the workspace links it once.
//!
//! Modules, in the order a deployment happens:
//! - `harness`: the real-PostgreSQL harness itself works (start, SQL, stop).
//! - `schema`: schemas/dbward.kdl-schema and the parser's vocabulary accept the same language.
//! - `examples`: every examples/*.kdl checks cleanly and is canonical; `dbward fmt` and
//!   `dbward explain` through the real binary.
//! - `artifacts`: the generated postgresql.conf, pg_hba.conf, pg_ident.conf, certificates and
//!   setup.sql, installed into a real PostgreSQL: allowed logins work, everything else is refused.
//! - `convergence`: setup.sql converges privileges in a real PostgreSQL: grants removed from
//!   the manifest or given by hand to managed roles are revoked, others survive, reruns are no-ops.
//! - `azure_setup`: the Azure setup.sql on a real PostgreSQL with a stub
//!   `pgaadauth_create_principal_with_oid`: each principal created once, with its object id,
//!   in `postgres` only; grants converge.
//! - `golden`: every text emitter over every example, against checked-in golden files.
//! - `provision`: the provisioning functions setup.sql installs, called as the admin user on a
//!   real PostgreSQL: exact rights, lock and drop, refusals, concurrency, hostile names, sweep.
//! - `live`: `dbward plan --live` / `apply --live` against a real PostgreSQL as the admin user:
//!   first apply converges every name under "*", then no changes; hand drift shown and converged;
//!   a missing db-name warned; an unreachable server fails alone.
//! - `plan_apply`: `dbward plan`/`apply` on a real filesystem: no-change re-apply, drift, saved
//!   plans and staleness, removals, the lock, confirmation on a real terminal, and an apply that
//!   fails halfway (EFBIG) changing nothing.
//! - `apply_killed`: `dbward apply` SIGKILLed at random instants in a loop: no torn file, and
//!   the next apply (no `--force`) finishes the record, converges and leaves no temp file.
//! - `cert`: `dbward cert issue` files used by real `psql` with verify-full against a real
//!   PostgreSQL presenting the relay's certificate.
//! - `relay`: the relay end to end with real PostgreSQL, psql and tokio-postgres: access,
//!   every refusal with its message and audit event, cancel, restarts, 200 sessions, reload.
//! - `relay_provision`: automatic provisioning through the relay: keep, best-effort-drop (a
//!   table left behind), a second session, two relays on one database, a hand-made role, rights
//!   changed on reload, the sweep at start and after `kill -9` of the real binary, warm admin
//!   connections, a hostile person name, a refused admin user, cancel.
//! - `rds`: Amazon RDS IAM authentication: SigV4 tokens from env and ECS credentials, checked by
//!   a real PostgreSQL through PAM the way RDS checks them; wrong secrets refused; never logged;
//!   clock skew learned from the credential endpoint's `Date`; a refused token never reused.
//! - `live_cloud`: `dbward plan --live` / `apply --live` on RDS (SigV4 token from env and ECS
//!   credentials), Azure (Entra token from a fake Entra ID) and Cloud SQL (impersonated login
//!   token from a fake Google, instance-name verification; without `host`/`ca-file`, the
//!   instance looked up and an ephemeral client certificate presented) as the admin user, checked by a
//!   real PostgreSQL through PAM; converge then no changes; Azure principals created in
//!   `postgres` first; wrong secrets, an expired or refused token, no credentials: errors
//!   naming database, host, user and what to check, never the token.
//! - `cloudsql`: Google Cloud SQL IAM authentication: login tokens by impersonation from a
//!   fake Google, checked by a real PostgreSQL (the role's password is the token issued); a
//!   refused token never reused; one token fetch per db user for 300 sessions; a certificate
//!   naming another instance refused.
//! - `azure`: Azure Database for PostgreSQL with Entra ID: one token per db-user principal from
//!   a fake Entra ID (env secret, certificate, workload identity, App Service, IMDS), checked by
//!   a real PostgreSQL through PAM (the token's `oid` must be the role's); the other identity's
//!   token refused; refresh with no failed session; every error's message; never logged.
//! - `diff`: who gains and who loses access: `dbward plan` against the deployed frozen.json,
//!   `dbward diff OLD NEW` in text, JSON and Markdown, exit codes, invalid manifests.
//! - `ci`: examples/ci/dbward.yml's `run:` steps, as written, on a git repository with a base
//!   and a pull-request branch: annotations, fmt, the access comment, plan.
//! - `commands`: every `dbward <sub> --flag` and `dbward-relay --flag` that a document, an example
//!   or a golden file names exists in the real command line.
//! - `relay_ops`: operating `dbward-relay`: `--check`, endpoints, audit, SIGHUP reload, SIGTERM drain.
//! - `peers`: three replicas of one relay (`relay { peers … }`): a CancelRequest sent to any of
//!   them cancels the query where the session is; forged, replayed, stale and second-hop
//!   forwards are refused and audited; unknown keys are dropped silently.
//! - `install_sh`: a self-hosted database's install.sh on a plain (non-Debian) cluster: files,
//!   include once, restart with pg_ctl, names created, setup.sql; then only reloads.
//! - `kubernetes`: the Kubernetes manifests of `relay { kubernetes … }` pass a schema validator
//!   (kubernetes-validate), hold no key, and the relay runs as the StatefulSet says, in an
//!   emulated pod (its args, peer id from its host name, uid 65532, the Secret mounted
//!   root-owned 0440, probes, SIGTERM).
//! - `deploy`: the files of deploy/: systemd's notify protocol against a local NOTIFY_SOCKET,
//!   the shipped unit verified by `systemd-analyze` and psql through the relay under its
//!   sandbox (`systemd-run` where systemd is PID 1, else namespaces and `setpriv`), the
//!   container image's command line.
//! - `fleet`: three relays behind a real HAProxy (TCP, round robin, health-checked on
//!   `/readyz`): pgbench `-C` through it reaches every replica and each audit event names its
//!   replica; a replica killed mid-run fails only its own sessions; SIGHUP everywhere ends a
//!   removed person's sessions on every replica; expiring and locked-out certificates end
//!   theirs; locked-out ones are refused by each replica; with the replicas as peers, psql's
//!   Ctrl+C cancels its query whatever replica the balancer sends the CancelRequest to.
//! - `walkthrough`: the README's walkthrough from the build to `select 1`, run exactly as
//!   written (apply, install.sh, relay, cert issue, psql) on a Debian cluster in namespaces of
//!   its own; every output line the README shows must appear.

mod apply_killed;
mod artifacts;
mod azure;
mod azure_setup;
mod cert;
mod ci;
mod cloudsql;
mod commands;
mod convergence;
mod deploy;
mod diff;
mod examples;
mod fleet;
mod golden;
mod harness;
mod install_sh;
mod kubernetes;
mod live;
mod live_cloud;
mod peers;
mod plan_apply;
mod provision;
mod rds;
mod relay;
mod relay_ops;
mod relay_provision;
mod schema;
mod walkthrough;
