//! The fake Google servers (`dbward_cloud::gcp::fake`) as a standalone process, for
//! benchmarks and manual runs against a real relay binary. Never for production.
//!
//! ```text
//! cargo run -p dbward-cloud --features fake --example fake_google -- \
//!     --relay dbward-relay@acme-prod.iam.gserviceaccount.com \
//!     --db-user ledger-reader@acme-prod.iam \
//!     --instance acme-prod:us-central1:ledger --ip 127.0.0.1 --server-ca /path/server-ca.pem \
//!     [--client-ca-out /path/client-ca.pem] [--set-passwords CONNINFO]
//! ```
//!
//! The relay's account is on the fake metadata server, may impersonate every `--db-user` (as
//! the manifest writes it, without `.gserviceaccount.com`) and holds Cloud SQL Client; the
//! instance answers `connectSettings` with `--ip` as its public address and `--server-ca` as
//! its CA. It prints the variables that point a relay at it (`NAME=value`, one a line), then
//! serves until killed. A database checks login tokens with
//! `tests/cloudsql/verify_cloudsql_token.py URL` (pam_exec), and trusts the client CA written
//! to `--client-ca-out`. With `--set-passwords CONNINFO` (a superuser's libpq connection
//! string), every login token is made its database user's password with psql before the fake
//! answers with it, so a server with `password` authentication accepts exactly the last token
//! issued (the benchmark's way: PAM would add a process per session to the database's cost).

use dbward_cloud::gcp::InstanceName;
use dbward_cloud::gcp::fake::FakeGoogle;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut relay, mut users, mut instance, mut ip, mut ca, mut client_ca_out) =
        (None, Vec::new(), None, None, None, None);
    let mut set_passwords = None;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--relay" => relay = Some(value),
            "--db-user" => users.push(value),
            "--instance" => instance = Some(value),
            "--ip" => ip = Some(value),
            "--server-ca" => ca = Some(value),
            "--client-ca-out" => client_ca_out = Some(value),
            "--set-passwords" => set_passwords = Some(value),
            other => {
                return Err(format!(
                    "unknown option {other}; see the file's doc comment"
                ));
            }
        }
    }
    let relay = relay.ok_or("--relay EMAIL is required")?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let fake = FakeGoogle::start().await;
        fake.attach_to_metadata(&relay);
        fake.allow_sql_client(&relay);
        for user in &users {
            let email = dbward_cloud::gcp::service_account_email(user);
            fake.add_account(&email);
            fake.allow_impersonation(&relay, &email);
        }
        if let Some(instance) = instance {
            let name = InstanceName::parse(&instance).map_err(|e| e.to_string())?;
            let ca = match ca {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read --server-ca {path}: {e}"))?,
                None => return Err("--instance needs --server-ca".into()),
            };
            let ip = ip.unwrap_or_else(|| "127.0.0.1".into());
            fake.add_instance(
                &name,
                serde_json::json!({
                    "serverCaCert": { "cert": ca },
                    "ipAddresses": [{ "type": "PRIMARY", "ipAddress": ip }],
                    "region": name.region,
                }),
            );
        }
        if let Some(conninfo) = set_passwords {
            fake.on_issue(move |principal, token, scopes| {
                if scopes
                    .iter()
                    .any(|s| s == dbward_cloud::gcp::SQLSERVICE_LOGIN)
                {
                    let role = principal.trim_end_matches(".gserviceaccount.com");
                    dbward_cloud::fake_db::set_password(&conninfo, role, token);
                }
            });
        }
        if let Some(path) = client_ca_out {
            std::fs::write(&path, fake.client_ca_pem())
                .map_err(|e| format!("cannot write --client-ca-out {path}: {e}"))?;
        }
        for (name, value) in fake.env() {
            println!("{name}={value}");
        }
        println!("FAKE_GOOGLE_URL={}", fake.url());
        std::future::pending::<()>().await;
        Ok(())
    })
}
