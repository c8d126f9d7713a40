//! Rule: the relay's replicas (`relay { peers … }`) can find each other. Codes:
//! `dbward::invalid_peers`, `dbward::lonely_peer` (warning).
//!
//! **Why it matters:** each replica encodes its peer id in the cancel keys it issues, and a
//! replica that receives a CancelRequest for another's key forwards it to the address listed
//! for that id. Two replicas with one id would each take the other's keys for their own, and
//! a cancel would be lost; an address that is not `host:port` is found only when a user presses
//! Ctrl+C. A list of one replica forwards nothing.
//!
//! **Example:**
//! ```kdl
//! relay {
//!     peers {
//!         peer 1 address="relay-1.internal:6433"
//!         peer 1 address="relay-2.internal:6433"   // invalid_peers: id 1 twice
//!         peer 5000 address="relay-3.internal"     // invalid_peers: id above 4095, no port
//!     }
//! }
//! ```
//!
//! **How to fix:** one `peer` per replica, each with its own id from 0 to 4095 and the
//! `host:port` where it accepts the cancels the others forward (a port of its own, not the
//! relay's `listen`); start each replica with `--peer-id` set to its id.

use std::collections::BTreeMap;

use super::addresses::socket_address;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::Manifest;

/// The highest id a cancel key has room for.
const MAX_ID: i128 = dbward_frozen::MAX_PEER_ID as i128;

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    for relay in manifest.nodes_named("relay") {
        let Some(peers) = relay.child("peers") else {
            continue;
        };
        let mut ids: BTreeMap<i128, Span> = BTreeMap::new();
        let mut addresses: BTreeMap<&str, Span> = BTreeMap::new();
        let mut count: i128 = 0;
        for peer in peers.children_named("peer") {
            count += 1;
            if let Some(id) = peer.args.first()
                && let Some(n) = id.as_int()
            {
                if !(0..=MAX_ID).contains(&n) {
                    diags.push(invalid(
                        format!("peer id {n} is not between 0 and {MAX_ID}"),
                        id.span,
                        "a cancel key has room for ids 0 to 4095; number the replicas from 0 \
                         (a StatefulSet's ordinals) or 1",
                    ));
                } else if let Some(first) = ids.insert(n, id.span) {
                    diags.push(
                        Diagnostic::error(
                            "dbward::invalid_peers",
                            format!("peer id {n} is listed twice"),
                        )
                        .label(id.span, "again here")
                        .label(first, "first here")
                        .help(
                            "each replica needs its own id: it is how the others know whose \
                             cancel key it is",
                        ),
                    );
                }
            }
            if let Some(address) = peer.prop("address")
                && let Some(s) = address.value.as_str()
            {
                if let Err(why) = socket_address(s) {
                    diags.push(invalid(
                        format!("peer address: {why}"),
                        address.value.span,
                        "write the host:port of that replica's peer listener, like \
                         address=\"relay-1.internal:6433\"",
                    ));
                } else if let Some(other) = ["listen", "metrics"]
                    .into_iter()
                    .find(|other| relay.child(other).and_then(|n| n.first_str()) == Some(s))
                {
                    diags.push(invalid(
                        format!("peer address {s} is the relay's `{other}` address"),
                        address.value.span,
                        "give the peer listener a port of its own, like the relay's port + 1",
                    ));
                } else if let Some(first) = addresses.insert(s, address.value.span) {
                    diags.push(
                        Diagnostic::error(
                            "dbward::invalid_peers",
                            format!("two peers have the address {s}"),
                        )
                        .label(address.value.span, "again here")
                        .label(first, "first here")
                        .help("each replica listens on an address of its own"),
                    );
                }
            }
        }
        if let Some(kubernetes) = relay.child("kubernetes") {
            // One peer per pod: as many as the replicas.
            count = kubernetes
                .prop("replicas")
                .and_then(|p| p.value.as_int())
                .unwrap_or(2);
        }
        if count < 2 {
            diags.push(
                Diagnostic::warning(
                    "dbward::lonely_peer",
                    format!(
                        "`peers` lists {count} replica{}: there is no other replica to forward \
                         cancels to",
                        if count == 1 { "" } else { "s" }
                    ),
                )
                .label(peers.head_span(), "here")
                .help(
                    "list every replica of the relay, this one included, or remove `peers` for a \
                     single relay",
                ),
            );
        }
    }
}

fn invalid(message: String, span: Span, help: &str) -> Diagnostic {
    Diagnostic::error("dbward::invalid_peers", message)
        .label(span, "here")
        .help(help.to_owned())
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    fn relay(peers: &str) -> String {
        format!(
            "relay {{\n    listen \"0.0.0.0:6432\"\n    public-name \"db.example.com\"\n    \
             metrics \"0.0.0.0:9187\"\n{peers}}}\n"
        )
    }

    #[test]
    fn peers_have_distinct_ids_in_range_and_usable_addresses() {
        let good = "    peers {\n        peer 0 address=\"r-0.x:6433\"\n        peer 1 address=\"10.0.0.2:6433\"\n    }\n";
        absent(&relay(good), "dbward::invalid_peers");
        absent(&relay(good), "dbward::lonely_peer");
        expect(
            &relay(&good.replace("peer 1 ", "peer 0 ")),
            "dbward::invalid_peers",
            "peer id 0 is listed twice",
        );
        expect(
            &relay(&good.replace("peer 1 ", "peer 4096 ")),
            "dbward::invalid_peers",
            "peer id 4096 is not between 0 and 4095",
        );
        expect(
            &relay(&good.replace("10.0.0.2:6433", "10.0.0.2")),
            "dbward::invalid_peers",
            "has no port",
        );
        expect(
            &relay(&good.replace("10.0.0.2:6433", "r-0.x:6433")),
            "dbward::invalid_peers",
            "two peers have the address r-0.x:6433",
        );
        expect(
            &relay(&good.replace("10.0.0.2:6433", "0.0.0.0:6432")),
            "dbward::invalid_peers",
            "peer address 0.0.0.0:6432 is the relay's `listen` address",
        );
        expect(
            &relay("    peers {\n        peer 0 address=\"a:1\"\n    }\n"),
            "dbward::lonely_peer",
            "lists 1 replica:",
        );
    }
}
