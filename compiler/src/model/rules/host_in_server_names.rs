//! Rule `dbward::host_not_in_server_names`: a self-hosted database's `postgres host=` must be one
//! of the names its server certificate is issued for.
//!
//! **Why it matters:** the relay connects to `host` and verifies the server certificate against
//! it (`verify-full`). A host the certificate does not name fails every connection at run time,
//! after `apply` has already deployed it.
//!
//! **Example:**
//! ```kdl
//! database orders {
//!     postgres host="pg-orders.internal"          // host_not_in_server_names
//!     self-hosted {
//!         server-names "pg-orders.prod.internal"
//!         config-dir "/etc/postgresql/15/main/dbward"
//!     }
//! }
//! ```
//!
//! **How to fix:** add the host to `server-names`, or connect to one of the names listed there.

use std::net::IpAddr;

use super::addresses;
use crate::diag::Diagnostic;
use crate::syntax::ast::Manifest;

/// Whether a certificate for `names` is valid for `host`: an exact name (DNS names compare
/// case-insensitively) or IP (compared as addresses), or a `*.` wildcard covering exactly one
/// label. The emitter uses the same test before it writes the relay's upstream.
pub fn covers<S: AsRef<str>>(names: &[S], host: &str) -> bool {
    let host_ip = host.parse::<IpAddr>().ok();
    names.iter().map(AsRef::as_ref).any(|name| {
        if let (Some(a), Ok(b)) = (host_ip, name.parse::<IpAddr>()) {
            return a == b;
        }
        if name.eq_ignore_ascii_case(host) {
            return true;
        }
        match (name.strip_prefix("*."), host.split_once('.')) {
            (Some(suffix), Some((label, rest))) => {
                !label.is_empty() && host_ip.is_none() && rest.eq_ignore_ascii_case(suffix)
            }
            _ => false,
        }
    })
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    for db in manifest.nodes_named("database") {
        let Some(self_hosted) = db.child("self-hosted") else {
            continue;
        };
        let Some(server_names) = self_hosted.child("server-names") else {
            // Without `server-names` the certificate is issued for the host itself.
            continue;
        };
        let Some(postgres) = db.child("postgres") else {
            continue;
        };
        let Some(host) = postgres.prop_str("host") else {
            continue;
        };
        let names: Vec<&str> = server_names.str_args().map(|(name, _)| name).collect();
        // A malformed host or name is `dbward::invalid_host`'s to report; comparing it here
        // would only add a second, confusing error.
        if !addresses::host(host)
            || !names
                .iter()
                .all(|name| addresses::host(name) || name.starts_with("*."))
        {
            continue;
        }
        if covers(&names, host) {
            continue;
        }
        let span = postgres
            .prop("host")
            .map(|p| p.value.span)
            .unwrap_or_else(|| postgres.head_span());
        diags.push(
            Diagnostic::error(
                "dbward::host_not_in_server_names",
                format!("the relay connects to `{host}`, but the server certificate is issued only for {}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")),
            )
            .label(span, "verified against the server certificate")
            .label(server_names.head_span(), "the certificate's names")
            .help(format!("add \"{host}\" to `server-names`, or set `host` to one of the names listed there")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::covers;
    use crate::model::rules::test_support::{absent, expect};

    #[test]
    fn server_names_cover_hosts() {
        let names = ["pg.internal", "10.0.0.1", "*.db.lan", "::1"];
        assert!(covers(&names, "pg.internal"));
        assert!(covers(&names, "PG.internal"));
        assert!(covers(&names, "10.0.0.1"));
        assert!(covers(&names, "0:0::1"));
        assert!(covers(&names, "a.db.lan"));
        assert!(!covers(&names, "a.b.db.lan"));
        assert!(!covers(&names, "10.0.0.2"));
        assert!(!covers(&names, "other"));
    }

    fn db(host: &str, names: &str) -> String {
        format!(
            "database orders {{\n    postgres host=\"{host}\"\n    self-hosted {{\n        server-names {names}\n        config-dir \"/etc/dbward\"\n    }}\n}}\n"
        )
    }

    #[test]
    fn host_must_be_a_certificate_name() {
        expect(
            &db("pg.internal", "\"pg.prod.internal\" \"10.0.0.1\""),
            "dbward::host_not_in_server_names",
            "`pg.internal`",
        );
        absent(
            &db("PG.internal", "\"pg.internal\" \"10.0.0.1\""),
            "dbward::host_not_in_server_names",
        );
        absent(
            &db("10.0.0.1", "\"pg.internal\" \"10.0.0.1\""),
            "dbward::host_not_in_server_names",
        );
    }
}
