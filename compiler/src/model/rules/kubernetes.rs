//! Rule: a relay deployed on Kubernetes (`relay { kubernetes … }`) can be reached and probed.
//! Codes: `dbward::kubernetes_unreachable`, `dbward::invalid_kubernetes`.
//!
//! **Why it matters:** in a pod, a Service sends clients to the pod's IP and the kubelet probes
//! `/readyz` and `/livez` on it. A relay listening on `127.0.0.1` is never reached, and without
//! a `metrics` endpoint (or with one on the loopback) every probe fails, so no replica ever
//! becomes ready. A namespace or replica count Kubernetes refuses fails `kubectl apply`.
//!
//! **Example:**
//! ```kdl
//! relay {
//!     listen "127.0.0.1:6432"                      // kubernetes_unreachable
//!     kubernetes image="registry/dbward-relay:1" replicas=0   // invalid_kubernetes
//! }
//! ```
//!
//! **How to fix:** `listen "0.0.0.0:6432"` and `metrics "0.0.0.0:9187"` (or `[::]`), a
//! namespace that is a DNS label (`dbward`), `replicas` of at least 1, and the image you built
//! from `deploy/container/Dockerfile`.

use std::net::SocketAddr;

use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Manifest, Node};

/// Most replicas we write; more is a typo.
const MAX_REPLICAS: i128 = 1000;

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    for relay in manifest.nodes_named("relay") {
        let Some(kubernetes) = relay.child("kubernetes") else {
            continue;
        };
        if let Some(peers) = relay.child("peers") {
            if let Some(peer) = peers.children_named("peer").next() {
                diags.push(
                    Diagnostic::error(
                        "dbward::invalid_kubernetes",
                        "on Kubernetes the compiler lists the peers: pod dbward-relay-N of the \
                         StatefulSet is peer N",
                    )
                    .label(peer.head_span(), "listed by hand")
                    .label(kubernetes.span, "deployed on Kubernetes here")
                    .help("write `peers` alone, without `peer` children"),
                );
            }
            let listen = relay.child("listen").and_then(|n| n.first_str());
            let metrics = relay.child("metrics").and_then(|n| n.first_str());
            if let (Some(listen), Some(metrics)) = (listen, metrics) {
                let peer_port = crate::model::kubernetes_peer_port(listen);
                if metrics
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    == Some(peer_port)
                {
                    diags.push(invalid(
                        format!(
                            "on Kubernetes the replicas forward cancels to each other on the \
                             relay's port + 1 ({peer_port}), which `metrics` uses"
                        ),
                        peers.head_span(),
                        "move `metrics` to another port, like 9187",
                    ));
                }
            }
        }
        reachable(relay, kubernetes, "listen", diags);
        reachable(relay, kubernetes, "metrics", diags);
        if let Some(replicas) = kubernetes.prop("replicas")
            && let Some(n) = replicas.value.as_int()
            && !(1..=MAX_REPLICAS).contains(&n)
        {
            diags.push(invalid(
                format!("replicas={n}: a Deployment of the relay needs 1 to {MAX_REPLICAS}"),
                replicas.span,
                "run at least two for a relay that survives a node going away: replicas=2",
            ));
        }
        if let Some(namespace) = kubernetes.prop("namespace")
            && let Some(name) = namespace.value.as_str()
            && !dns_label(name)
        {
            diags.push(invalid(
                format!("`{name}` is not a Kubernetes namespace name"),
                namespace.span,
                "a namespace is a DNS label: lower-case letters, digits and `-`, 1 to 63, \
                 starting and ending with a letter or digit (`dbward`)",
            ));
        }
        if let Some(image) = kubernetes.prop("image")
            && let Some(reference) = image.value.as_str()
            && (reference.is_empty() || reference.chars().any(char::is_whitespace))
        {
            diags.push(invalid(
                format!("`{reference}` is not a container image reference"),
                image.span,
                "name the image you built from deploy/container/Dockerfile, e.g. \
                 image=\"registry.example.com/dbward-relay:0.1.0\"",
            ));
        }
    }
}

/// `listen` or `metrics` of the relay must exist and not be a loopback address.
fn reachable(relay: &Node, kubernetes: &Node, what: &str, diags: &mut Vec<Diagnostic>) {
    let (by, example) = match what {
        "listen" => ("the Service", "listen \"0.0.0.0:6432\""),
        _ => (
            "the kubelet's readiness and liveness probes (/readyz, /livez)",
            "metrics \"0.0.0.0:9187\"",
        ),
    };
    let Some(node) = relay.child(what) else {
        diags.push(
            Diagnostic::error(
                "dbward::kubernetes_unreachable",
                format!("on Kubernetes the relay needs `{what}`: {by} reach it on the pod's IP"),
            )
            .label(kubernetes.span, "deployed on Kubernetes here")
            .help(format!("add `{example}` to the relay block")),
        );
        return;
    };
    let Some(address) = node.first_str() else {
        return;
    };
    let Ok(address) = address.parse::<SocketAddr>() else {
        // Not an IP address (a host name): the addresses rule has its say.
        return;
    };
    if address.ip().is_loopback() {
        diags.push(
            Diagnostic::error(
                "dbward::kubernetes_unreachable",
                format!(
                    "`{what}` is on the loopback ({address}), which {by} cannot reach in a pod"
                ),
            )
            .label(node.first_arg_span(), "loopback")
            .label(kubernetes.span, "deployed on Kubernetes here")
            .help(format!(
                "listen on every address of the pod: `{example}` (or `[::]`)"
            )),
        );
    }
}

fn invalid(message: String, span: Span, help: &str) -> Diagnostic {
    Diagnostic::error("dbward::invalid_kubernetes", message)
        .label(span, "here")
        .help(help.to_owned())
}

/// A DNS-1123 label, what Kubernetes requires of a namespace name.
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    fn relay(body: &str) -> String {
        format!("relay {{\n    public-name \"db.example.com\"\n{body}}}\n")
    }

    #[test]
    fn a_relay_on_kubernetes_must_be_reachable_and_probed() {
        let k = "    kubernetes image=\"r/dbward-relay:1\"\n";
        expect(
            &relay(&format!(
                "    listen \"127.0.0.1:6432\"\n    metrics \"0.0.0.0:9187\"\n{k}"
            )),
            "dbward::kubernetes_unreachable",
            "`listen` is on the loopback (127.0.0.1:6432)",
        );
        expect(
            &relay(&format!("    listen \"0.0.0.0:6432\"\n{k}")),
            "dbward::kubernetes_unreachable",
            "needs `metrics`",
        );
        expect(
            &relay(&format!(
                "    listen \"0.0.0.0:6432\"\n    metrics \"[::1]:9187\"\n{k}"
            )),
            "dbward::kubernetes_unreachable",
            "`metrics` is on the loopback",
        );
        absent(
            &relay(&format!(
                "    listen \"0.0.0.0:6432\"\n    metrics \"[::]:9187\"\n{k}"
            )),
            "dbward::kubernetes_unreachable",
        );
        // Without kubernetes, the loopback is fine.
        absent(
            &relay("    listen \"127.0.0.1:6432\"\n"),
            "dbward::kubernetes_unreachable",
        );
    }

    #[test]
    fn replicas_namespace_and_image_are_what_kubernetes_accepts() {
        let base = "    listen \"0.0.0.0:6432\"\n    metrics \"0.0.0.0:9187\"\n";
        let with = |props: &str| relay(&format!("{base}    kubernetes {props}\n"));
        expect(
            &with("image=\"r/x:1\" replicas=0"),
            "dbward::invalid_kubernetes",
            "replicas=0",
        );
        expect(
            &with("image=\"r/x:1\" namespace=\"Prod_DB\""),
            "dbward::invalid_kubernetes",
            "`Prod_DB` is not a Kubernetes namespace name",
        );
        expect(
            &with("image=\"r x\""),
            "dbward::invalid_kubernetes",
            "not a container image reference",
        );
        absent(
            &with("image=\"r/x:1\" replicas=3 namespace=\"dbward\" service-type=\"LoadBalancer\""),
            "dbward::invalid_kubernetes",
        );
        expect(
            &relay(&format!(
                "{base}    kubernetes image=\"r/x:1\"\n    peers {{\n        peer 0 address=\"a:1\"\n        \
                 peer 1 address=\"b:1\"\n    }}\n"
            )),
            "dbward::invalid_kubernetes",
            "on Kubernetes the compiler lists the peers",
        );
        absent(
            &relay(&format!(
                "{base}    kubernetes image=\"r/x:1\"\n    peers\n"
            )),
            "dbward::invalid_kubernetes",
        );
        expect(
            &relay(
                "    listen \"0.0.0.0:6432\"\n    metrics \"0.0.0.0:6433\"\n    \
                 kubernetes image=\"r/x:1\"\n    peers\n",
            ),
            "dbward::invalid_kubernetes",
            "port + 1 (6433), which `metrics` uses",
        );
    }
}
