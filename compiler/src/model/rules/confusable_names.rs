//! Rule `dbward::confusable_name` (warning): two different names that look the same — their
//! confusable skeletons (Unicode TR39, section 4) are equal.
//!
//! Names are compared within their namespace (people with people, database users and roles
//! with each other across every database, databases with databases, roles, clouds, database
//! names, label keys, label values), and people with database users as well: a provisioned
//! person becomes a PostgreSQL user next to the declared ones, and `pg_ident.conf` maps
//! certificate subjects to database users.
//!
//! **Why it matters:** `cаrol` (Cyrillic `а`) next to `carol` is a second person whom a reviewer
//! reads as the first; a db-user `аpp` next to `app` receives grants nobody meant; a
//! `deny { db-names "оrders" }` looks like it protects `orders` and protects nothing.
//!
//! **Example:**
//! ```kdl
//! user carol { roles support; }
//! user "cаrol" { roles admin; }   // confusable_name: looks like user `carol`
//! ```
//!
//! **How to fix:** rename one of the two so they no longer look alike (the message spells both
//! out, `c<U+0430>rol` against `carol`). It is a warning because `l`/`1`/`I` and `rn`/`m` also
//! look alike in plain ASCII and may be meant; `dbward check --deny-warnings` makes it fatal.

use std::collections::HashMap;

use unicode_security::skeleton;

use super::safe_names::{Kind, each_name};
use crate::diag::{Diagnostic, Span};
use crate::source::spelled_out;
use crate::syntax::ast::Manifest;

/// The namespace a kind is compared in: people and database users share one.
fn namespace(kind: Kind) -> Option<Kind> {
    match kind {
        // SQL objects name what exists in a database already; they are not defined here.
        Kind::SqlObject => None,
        Kind::Person => Some(Kind::DbUser),
        other => Some(other),
    }
}

/// A name as first written: its kind, its text and where.
type Written<'a> = (Kind, &'a str, Span);

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    // The first place each distinct (kind, name) is written, in manifest order.
    let mut seen: HashMap<(Kind, &str), Span> = HashMap::new();
    let mut names: Vec<Written> = Vec::new();
    each_name(manifest, |name, span, _, kind| {
        if namespace(kind).is_some() && !seen.contains_key(&(kind, name)) {
            seen.insert((kind, name), span);
            names.push((kind, name, span));
        }
    });
    // Skeleton -> the names already met with it, per namespace.
    let mut by_skeleton: HashMap<(Kind, String), Vec<Written>> = HashMap::new();
    for (kind, name, span) in names {
        let Some(space) = namespace(kind) else {
            continue;
        };
        let key = (space, skeleton(name).collect::<String>());
        let earlier = by_skeleton.entry(key).or_default();
        // A person and a database user of the same name are the same PostgreSQL user on
        // purpose (provisioning, pg_ident); only different names can be confused.
        if let Some(&(other_kind, other, other_span)) = earlier.iter().find(|(_, n, _)| *n != name)
        {
            diags.push(
                Diagnostic::warning(
                    "dbward::confusable_name",
                    format!(
                        "{} `{name}` looks like {} `{other}`",
                        kind.noun(),
                        other_kind.noun()
                    ),
                )
                .label(span, "this name")
                .label(other_span, "looks like this one")
                .help(format!(
                    "they are different names that display alike (`{}` and `{}`): rename one \
                     so that no reviewer can mistake one for the other",
                    spelled_out(name),
                    spelled_out(other)
                )),
            );
        }
        earlier.push((kind, name, span));
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, diags, expect};

    const CODE: &str = "dbward::confusable_name";

    #[test]
    fn cyrillic_look_alikes_are_reported_with_both_names() {
        let body =
            "role r {\n}\nuser carol {\n    roles r\n}\nuser \"c\u{430}rol\" {\n    roles r\n}\n";
        expect(body, CODE, "user `c\u{430}rol` looks like user `carol`");
        let found = diags(body);
        let warning = found.iter().find(|d| d.code == CODE).unwrap();
        assert!(!warning.is_error(), "a look-alike is a warning");
        assert_eq!(warning.labels.len(), 2, "points at both names");
        assert!(
            warning
                .help
                .as_deref()
                .unwrap()
                .contains("`c<U+0430>rol` and `carol`"),
            "{warning:?}"
        );
    }

    #[test]
    fn namespaces() {
        // Database users across databases, and db-roles with db-users.
        expect(
            "database a {\n    db-user app\n}\ndatabase b {\n    db-role \"\u{430}pp\"\n}\n",
            CODE,
            "database user `\u{430}pp` looks like database user `app`",
        );
        // People with database users.
        expect(
            "database a {\n    db-user app\n}\nrole r {\n}\nuser \"\u{430}pp\" {\n    roles r\n}\n",
            CODE,
            "user `\u{430}pp` looks like database user `app`",
        );
        // Database names in allows and denies.
        expect(
            "role r {\n    deny {\n        db-names orders \"\u{43e}rders\"\n    }\n}\n",
            CODE,
            "database name `\u{43e}rders` looks like database name `orders`",
        );
        // Roles and label values.
        expect(
            "role admin {\n}\nrole \"\u{430}dmin\" {\n}\n",
            CODE,
            "role `\u{430}dmin`",
        );
        expect(
            "database a {\n    labels env=prod\n}\ndatabase b {\n    labels env=\"pr\u{43e}d\"\n}\n",
            CODE,
            "label value `pr\u{43e}d`",
        );
        // A role and a person may share a look (different namespaces), the same name in two
        // databases is one user, and a person named like a db-user is provisioning's business.
        absent(
            "role carol {\n}\nuser \"c\u{430}rol\" {\n    roles carol\n}\n",
            CODE,
        );
        absent(
            "database a {\n    db-user app\n}\ndatabase b {\n    db-user app\n}\nrole r {\n}\nuser app {\n    roles r\n}\n",
            CODE,
        );
    }
}
