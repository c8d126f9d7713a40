//! The fake Entra ID as a standalone process, for benchmarks and manual runs:
//!
//! ```sh
//! cargo run -p dbward-cloud --features fake --example fake_entra -- \
//!     TENANT CLIENT_ID=OBJECT_ID [CLIENT_ID=OBJECT_ID …]
//! ```
//!
//! Every principal is a user-assigned identity of the "VM" (IMDS). It prints the variables that
//! point a relay at it (one `NAME=value` a line) and the key its tokens are signed with
//! (`signing-key HEX`, for a PAM verifier such as `tests/azure/verify_entra_token.py`), then
//! serves until killed.

use dbward_cloud::azure::fake::FakeEntra;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(tenant) = args.next() else {
        eprintln!("usage: fake_entra TENANT CLIENT_ID=OBJECT_ID [CLIENT_ID=OBJECT_ID …]");
        std::process::exit(2);
    };
    let fake = FakeEntra::start(&tenant).await;
    for principal in args {
        let Some((client, object)) = principal.split_once('=') else {
            eprintln!("{principal:?} is not CLIENT_ID=OBJECT_ID");
            std::process::exit(2);
        };
        fake.add_principal(client, object);
        fake.assign_to_vm(client);
    }
    for (name, value) in fake.env() {
        println!("{name}={value}");
    }
    println!("signing-key {}", fake.signing_key());
    std::future::pending::<()>().await;
}
