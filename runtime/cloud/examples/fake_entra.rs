//! The fake Entra ID as a standalone process, for benchmarks and manual runs:
//!
//! ```sh
//! cargo run -p dbward-cloud --features fake --example fake_entra -- \
//!     TENANT CLIENT_ID=OBJECT_ID[=ROLE] [CLIENT_ID=OBJECT_ID[=ROLE] …] [--set-passwords CONNINFO]
//! ```
//!
//! Every principal is a user-assigned identity of the "VM" (IMDS). It prints the variables that
//! point a relay at it (one `NAME=value` a line) and the key its tokens are signed with
//! (`signing-key HEX`, for a PAM verifier such as `tests/azure/verify_entra_token.py`), then
//! serves until killed. With `--set-passwords CONNINFO` (a superuser's libpq connection string),
//! every token issued for a principal written with `=ROLE` is made that role's password with psql
//! before the fake answers with it, so a server with `password` authentication accepts exactly
//! the last token issued (the benchmark's way: PAM would add a process per session).

use dbward_cloud::azure::fake::FakeEntra;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(tenant) = args.next() else {
        eprintln!(
            "usage: fake_entra TENANT CLIENT_ID=OBJECT_ID[=ROLE] … [--set-passwords CONNINFO]"
        );
        std::process::exit(2);
    };
    let fake = FakeEntra::start(&tenant).await;
    let mut roles = std::collections::BTreeMap::new();
    let mut set_passwords = None;
    while let Some(arg) = args.next() {
        if arg == "--set-passwords" {
            set_passwords = args.next();
            continue;
        }
        let mut parts = arg.splitn(3, '=');
        let (Some(client), Some(object)) = (parts.next(), parts.next()) else {
            eprintln!("{arg:?} is not CLIENT_ID=OBJECT_ID[=ROLE]");
            std::process::exit(2);
        };
        fake.add_principal(client, object);
        fake.assign_to_vm(client);
        if let Some(role) = parts.next() {
            roles.insert(client.to_lowercase(), role.to_owned());
        }
    }
    if let Some(conninfo) = set_passwords {
        fake.on_issue(move |client, token| {
            if let Some(role) = roles.get(&client.to_lowercase()) {
                dbward_cloud::fake_db::set_password(&conninfo, role, token);
            }
        });
    }
    for (name, value) in fake.env() {
        println!("{name}={value}");
    }
    println!("signing-key {}", fake.signing_key());
    std::future::pending::<()>().await;
}
