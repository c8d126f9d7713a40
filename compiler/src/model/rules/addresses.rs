//! Rule: addresses, host names, ports and paths are usable. Codes: `dbward::invalid_address`,
//! `dbward::invalid_port`, `dbward::invalid_host`, `dbward::invalid_path`.
//!
//! **Why it matters:** the relay binds `listen` at start-up and the generated certificates carry
//! `public-name` and `server-names`; a typo found at deploy time is an outage, found here it is a
//! line of output.
//!
//! **Example:**
//! ```kdl
//! relay { listen "6432" }                  // invalid_address: host:port
//! postgres host="pg.internal" port=70000   // invalid_port: 1–65535
//! ```
//!
//! **How to fix:** write addresses as `host:port` (`"0.0.0.0:6432"`, `"[::1]:6432"`), ports
//! between 1 and 65535, DNS names or IP addresses for hosts, absolute paths for `config-dir` and
//! `aws-rds ca-file`, `cloud-sql ca-file` and `azure-postgres ca-file` (the relay may run from
//! any directory).

use std::net::IpAddr;

use super::walk_known;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::Manifest;

/// A DNS name: dot-separated labels of letters, digits and `-`, each 1–63, at most 253 in all.
pub fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A DNS name or an IP address.
pub fn host(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || dns_name(s)
}

/// Checks `host:port`; returns what is wrong.
pub fn socket_address(s: &str) -> Result<(), String> {
    let (host_part, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("`{s}` is not `[ipv6]:port`"))?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
        (None, port)
    } else {
        let (h, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port; write host:port"))?;
        if h.contains(':') {
            return Err(format!(
                "`{s}`: write an IPv6 address in brackets, `[{h}]:{port}`"
            ));
        }
        (Some(h), port)
    };
    if let Some(h) = host_part
        && !host(h)
    {
        return Err(format!("`{h}` is not a host name or IP address"));
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!("`{port}` is not a port between 1 and 65535")),
    }
}

fn bad(code: &'static str, message: String, span: Span, help: &str) -> Diagnostic {
    Diagnostic::error(code, message)
        .label(span, "here")
        .help(help.to_string())
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    check_server_names(manifest, diags);
    walk_known(manifest, |node, spec| match spec.path {
        "relay/listen" | "relay/metrics" => {
            if let Some(v) = node.args.first()
                && let Some(s) = v.as_str()
                && let Err(why) = socket_address(s)
            {
                diags.push(bad(
                    "dbward::invalid_address",
                    why,
                    v.span,
                    "write host:port, like \"0.0.0.0:6432\" or \"[::1]:6432\"",
                ));
            }
        }
        "relay/public-name" => {
            if let Some((s, span)) = node.str_args().next()
                && !dns_name(s)
            {
                diags.push(bad("dbward::invalid_host", format!("`{s}` is not a DNS name"), span, "write the DNS name clients use, like \"db.example.com\"; databases are reached at <database>.<public-name>"));
            }
        }
        "database/self-hosted/server-names" => {
            for (s, span) in node.str_args() {
                if !host(s) {
                    diags.push(bad(
                        "dbward::invalid_host",
                        format!("`{s}` is not a DNS name or IP address"),
                        span,
                        "server certificates can only name DNS names and IP addresses",
                    ));
                }
            }
        }
        "database/postgres" => {
            if let Some(p) = node.prop("host")
                && let Some(s) = p.value.as_str()
                && !host(s)
            {
                diags.push(bad(
                    "dbward::invalid_host",
                    format!("`{s}` is not a DNS name or IP address"),
                    p.value.span,
                    "write the server's DNS name or IP address, without port or scheme",
                ));
            }
            if let Some(p) = node.prop("port")
                && let Some(n) = p.value.as_int()
                && !(1..=65535).contains(&n)
            {
                diags.push(bad(
                    "dbward::invalid_port",
                    format!("{n} is not a port"),
                    p.value.span,
                    "write a port between 1 and 65535 (PostgreSQL's default is 5432)",
                ));
            }
        }
        "database/self-hosted/config-dir" | "relay/audit" => {
            if let Some((s, span)) = node.str_args().next() {
                let absolute_needed = spec.path.ends_with("config-dir");
                if s.is_empty() || s.chars().any(char::is_control) {
                    diags.push(bad(
                        "dbward::invalid_path",
                        "the path is empty or contains control characters".into(),
                        span,
                        "write a plain file system path",
                    ));
                } else if absolute_needed && !s.starts_with('/') {
                    diags.push(bad("dbward::invalid_path", format!("`{s}` is not an absolute path"), span, "write an absolute path: it is written into postgresql.conf, where relative paths mean the data directory"));
                }
            }
        }
        "database/aws-rds" | "database/cloud-sql" | "database/azure-postgres" => {
            if let Some(p) = node.prop("ca-file")
                && let Some(s) = p.value.as_str()
            {
                if s.is_empty() || s.chars().any(char::is_control) {
                    diags.push(bad(
                        "dbward::invalid_path",
                        "the path is empty or contains control characters".into(),
                        p.value.span,
                        "write a plain file system path",
                    ));
                } else if !s.starts_with('/') {
                    diags.push(bad(
                        "dbward::invalid_path",
                        format!("`{s}` is not an absolute path"),
                        p.value.span,
                        "write the absolute path of Amazon's RDS CA bundle on the relay's host, \
                         like \"/etc/dbward/rds-global-bundle.pem\"",
                    ));
                }
            }
        }
        _ => {}
    });
}

/// Each database is reached at `<database>.<public-name>`, which must itself be a DNS name.
fn check_server_names(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    let public = manifest
        .nodes_named("relay")
        .flat_map(|r| r.children_named("public-name"))
        .find_map(|n| n.first_str())
        .filter(|p| dns_name(p));
    let Some(public) = public else { return };
    for db in manifest.nodes_named("database") {
        let Some(name) = db.first_str() else { continue };
        let full = format!("{name}.{public}");
        if full.len() > 253 {
            diags.push(bad(
                "dbward::invalid_host",
                format!("`{full}` is longer than the 253 characters of a DNS name"),
                db.first_arg_span(),
                "clients reach a database at <database>.<public-name>: shorten the database name or the relay's public-name",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::test_support::expect;

    #[test]
    fn addresses() {
        assert!(socket_address("0.0.0.0:6432").is_ok());
        assert!(socket_address("[::1]:6432").is_ok());
        assert!(socket_address("localhost:1").is_ok());
        assert!(socket_address("6432").is_err());
        assert!(socket_address("0.0.0.0:0").is_err());
        assert!(socket_address("0.0.0.0:65536").is_err());
        assert!(socket_address("::1:6432").is_err());
        assert!(socket_address("bad host:1").is_err());
    }

    #[test]
    fn server_name_length() {
        let label = "x".repeat(60);
        let text = format!(
            "dbward version=1\nrelay {{\n    listen \"0.0.0.0:1\"\n    public-name \"{label}.{label}.{label}.example.com\"\n}}\ndatabase {} {{\n}}\n",
            "d".repeat(60)
        );
        let diags = crate::check(&crate::source::Source::new("t.kdl", text)).diagnostics;
        assert!(
            diags
                .iter()
                .any(|d| d.code == "dbward::invalid_host" && d.message.contains("253")),
            "{diags:#?}"
        );
    }

    #[test]
    fn reported() {
        expect(
            "database d {\n    postgres host=\"h\" port=70000\n}\n",
            "dbward::invalid_port",
            "70000",
        );
        expect(
            "database d {\n    postgres host=\"postgres://h\"\n}\n",
            "dbward::invalid_host",
            "postgres://h",
        );
        expect(
            "database d {\n    self-hosted {\n        config-dir \"etc/x\"\n    }\n}\n",
            "dbward::invalid_path",
            "absolute",
        );
        expect(
            "database d {\n    aws-rds cloud=aws resource-id=\"db-X\" ca-file=\"rds.pem\"\n}\n",
            "dbward::invalid_path",
            "rds.pem",
        );
    }
}
