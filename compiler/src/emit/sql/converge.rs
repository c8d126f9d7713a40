//! The part of setup.sql that takes privileges away: every privilege a role the manifest manages
//! holds on this database's objects, and the manifest does not declare, is revoked.
//!
//! GRANT alone only ever adds, so a grant removed from the manifest (or one given by hand) would
//! stay forever. This block reads what is held from the catalogs (`aclexplode` over
//! `pg_database`, `pg_namespace`, `pg_class`, `pg_attribute` (column privileges, which the
//! manifest never grants), `pg_proc`, and the `pg_default_acl` entries of the
//! role running the script, which is who dbward's `ALTER DEFAULT PRIVILEGES` names), compares it
//! with the declared privileges written into the block as a `VALUES` list, and revokes the
//! difference. setup.sql then GRANTs what is declared, in the same transaction, so no other
//! session ever sees a role with less than both the old and the new manifest give it.
//!
//! What it never touches: `PUBLIC`, roles the manifest does not declare (people's provisioned
//! users included), the admin user, the role running the script, an object owner's own
//! privileges, other databases, and object kinds the manifest cannot speak about (types,
//! languages, large objects, …). A privilege granted by a role other than the owner is revoked as
//! that role (`SET LOCAL ROLE`). One it cannot revoke (the runner may not act as the grantor,
//! or the role passed it on to others, which only `CASCADE` would take back from them too) is
//! left in place with a `WARNING` saying what to do, so the rest of the script still converges.

use std::fmt::Write as _;

use crate::emit::quote::{self, literal};
use crate::model::{Database, Grant, ObjectKind, Privilege};

/// One privilege the manifest declares, as a row of the block's `declared` relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Declared {
    pub grantee: String,
    /// `database`, `schema`, `table`, `sequence`, `function`, or `default-tables`,
    /// `default-sequences`, `default-functions` for the runner's default privileges.
    pub kind: &'static str,
    pub schema: Option<String>,
    /// One object's name; `None` for every object of the kind in the schema.
    pub object: Option<String>,
    /// The keyword as `aclexplode` spells it, or `ALL` for every privilege of the kind (which
    /// differs between server versions: PostgreSQL 17 adds `MAINTAIN` on tables).
    pub privilege: &'static str,
}

/// The privileges `grant` gives `grantee` as [`Declared`] rows. This mirrors
/// [`super::grant_sql`] with [`super::Future::Included`]: one row per privilege and object
/// kind, plus the default-privilege rows for grants on every object of a schema.
pub(super) fn declared(grantee: &str, grant: &Grant) -> Vec<Declared> {
    let schema = grant.schema.as_deref().unwrap_or("public").to_owned();
    let mut targets: Vec<(&'static str, Option<String>, Option<String>)> = Vec::new();
    let mut every = |kind: &'static str, default_kind: &'static str| {
        targets.push((kind, Some(schema.clone()), None));
        targets.push((default_kind, Some(schema.clone()), None));
    };
    match (grant.on, grant.object.as_deref()) {
        (ObjectKind::Database, _) => targets.push(("database", None, None)),
        (ObjectKind::Schema, _) => targets.push(("schema", Some(schema.clone()), None)),
        (ObjectKind::Table, Some(name)) => {
            targets.push(("table", Some(schema.clone()), Some(name.to_owned())));
        }
        (ObjectKind::Sequence, Some(name)) => {
            targets.push(("sequence", Some(schema.clone()), Some(name.to_owned())));
        }
        (ObjectKind::Function, Some(name)) => {
            targets.push(("function", Some(schema.clone()), Some(name.to_owned())));
        }
        (ObjectKind::Table | ObjectKind::AllTables, _) => every("table", "default-tables"),
        (ObjectKind::Sequence | ObjectKind::AllSequences, _) => {
            every("sequence", "default-sequences");
        }
        (ObjectKind::Function | ObjectKind::AllFunctions, _) => {
            every("function", "default-functions");
        }
    }
    let mut rows = Vec::new();
    for (kind, schema, object) in targets {
        for privilege in &grant.privileges {
            rows.push(Declared {
                grantee: grantee.to_owned(),
                kind,
                schema: schema.clone(),
                object: object.clone(),
                privilege: match privilege {
                    Privilege::All => "ALL",
                    other => other.sql(),
                },
            });
        }
    }
    rows
}

/// A SQL text value or `NULL`, typed so that a `VALUES` list of only `NULL`s still has a type.
fn nullable(value: Option<&str>) -> String {
    value.map_or_else(|| "NULL::text".to_owned(), literal)
}

/// `(VALUES (…), …)` of declared rows, or an empty relation of the same shape.
fn declared_relation(rows: &[Declared]) -> String {
    if rows.is_empty() {
        return "(SELECT NULL::text, NULL::text, NULL::text, NULL::text, NULL::text WHERE false)"
            .to_owned();
    }
    let rows: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "({}, {}, {}, {}, {})",
                literal(&r.grantee),
                literal(r.kind),
                nullable(r.schema.as_deref()),
                nullable(r.object.as_deref()),
                literal(r.privilege)
            )
        })
        .collect();
    format!("(VALUES\n          {})", rows.join(",\n          "))
}

/// The held privileges, one row each, of every object kind the manifest can grant on. An
/// owner's own entries are left out: owners are not ours to change.
const HELD: &str = "        SELECT 'database'::text AS kind, NULL::text AS nsp, NULL::text AS obj, NULL::oid AS fn,
               NULL::text AS col, d.datdba AS owner, a.grantee, a.grantor, a.privilege_type, a.is_grantable
        FROM pg_catalog.pg_database d, pg_catalog.aclexplode(d.datacl) a
        WHERE d.datname = pg_catalog.current_database() AND a.grantee <> d.datdba
        UNION ALL
        SELECT 'schema', n.nspname::text, NULL, NULL, NULL,
               n.nspowner, a.grantee, a.grantor, a.privilege_type, a.is_grantable
        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
        WHERE a.grantee <> n.nspowner
        UNION ALL
        -- Tables as GRANT ON ALL TABLES sees them (views, foreign and partitioned tables too).
        SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, n.nspname::text,
               c.relname::text, NULL, NULL,
               c.relowner, a.grantee, a.grantor, a.privilege_type, a.is_grantable
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
        pg_catalog.aclexplode(c.relacl) a
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND a.grantee <> c.relowner
        UNION ALL
        -- Column privileges: the manifest grants none, so every one a managed role holds goes.
        SELECT 'column', n.nspname::text, c.relname::text, NULL, att.attname::text,
               c.relowner, a.grantee, a.grantor, a.privilege_type, a.is_grantable
        FROM pg_catalog.pg_attribute att
        JOIN pg_catalog.pg_class c ON c.oid = att.attrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
        pg_catalog.aclexplode(att.attacl) a
        WHERE att.attnum > 0 AND NOT att.attisdropped AND a.grantee <> c.relowner
        UNION ALL
        SELECT 'function', n.nspname::text, p.proname::text, p.oid, NULL,
               p.proowner, a.grantee, a.grantor, a.privilege_type, a.is_grantable
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace,
        pg_catalog.aclexplode(p.proacl) a
        WHERE a.grantee <> p.proowner
        UNION ALL
        -- Only the default privileges of the role running this script, per schema: the ones
        -- dbward's ALTER DEFAULT PRIVILEGES IN SCHEMA sets.
        SELECT CASE da.defaclobjtype WHEN 'r' THEN 'default-tables'
                 WHEN 'S' THEN 'default-sequences' ELSE 'default-functions' END,
               n.nspname::text, NULL, NULL, NULL,
               da.defaclrole, a.grantee, a.grantor, a.privilege_type, a.is_grantable
        FROM pg_catalog.pg_default_acl da
        JOIN pg_catalog.pg_namespace n ON n.oid = da.defaclnamespace,
        pg_catalog.aclexplode(da.defaclacl) a
        WHERE da.defaclrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
          AND da.defaclobjtype IN ('r', 'S', 'f')";

/// Appends the revoking `DO` block for `db` to `out`; nothing when the manifest manages no role
/// on it.
pub(super) fn revoke_undeclared(out: &mut String, db: &Database) {
    let admin = db.admin_user.as_ref().map(|a| a.name.as_str());
    let managed: Vec<&String> = db
        .db_roles
        .keys()
        .chain(db.db_users.keys())
        .filter(|name| Some(name.as_str()) != admin)
        .collect();
    if managed.is_empty() {
        return;
    }
    let mut rows = Vec::new();
    for role in db.db_roles.values() {
        for grant in &role.grants {
            rows.extend(declared(&role.name, grant));
        }
    }
    let mut body = String::new();
    let _ = write!(
        body,
        "  -- Pass 1 revokes; pass 2 warns about whatever could not be revoked.\n  \
         FOR pass IN 1..2 LOOP\n    \
         FOR held IN\n      \
         WITH managed AS (\n        \
         SELECT r.oid, r.rolname::text AS name FROM pg_catalog.pg_roles r\n        \
         WHERE r.rolname = ANY ({managed}) AND r.rolname <> current_user\n      \
         ),\n      \
         declared(grantee, kind, nsp, obj, privilege) AS {declared},\n      \
         acl AS (\n{HELD}\n      \
         ),\n      \
         classified AS (\n        \
         SELECT acl.*, m.name AS grantee_name,\n               \
         coalesce(g.rolname::text, acl.grantor::text) AS grantor_name,\n               \
         EXISTS (\n                 \
         SELECT FROM declared d\n                 \
         WHERE d.grantee = m.name AND d.privilege IN ('ALL', acl.privilege_type)\n                   \
         AND ((d.kind = acl.kind AND (acl.kind = 'database' OR d.nsp = acl.nsp)\n                         \
         AND (d.obj IS NULL OR d.obj = acl.obj))\n                     \
         -- GRANT ON TABLE also names a sequence: one named relation matches either kind.\n                     \
         OR (acl.kind IN ('table', 'sequence') AND d.kind IN ('table', 'sequence')\n                         \
         AND d.nsp = acl.nsp AND d.obj = acl.obj))\n               \
         ) AS wanted\n        \
         FROM acl\n        \
         JOIN managed m ON m.oid = acl.grantee\n        \
         LEFT JOIN pg_catalog.pg_roles g ON g.oid = acl.grantor\n      \
         )\n      \
         SELECT * FROM classified WHERE NOT wanted OR is_grantable\n      \
         ORDER BY kind, nsp, obj, fn, col, grantee_name, privilege_type\n    \
         LOOP\n      \
         held_any := true;\n      \
         -- A declared privilege held WITH GRANT OPTION keeps the privilege, loses the option.\n      \
         what := CASE WHEN held.wanted THEN 'GRANT OPTION FOR ' ELSE '' END || held.privilege_type;\n      \
         revoke_sql := CASE held.kind\n        \
         WHEN 'database' THEN format('REVOKE %s ON DATABASE %I FROM %I',\n          \
         what, pg_catalog.current_database(), held.grantee_name)\n        \
         WHEN 'schema' THEN format('REVOKE %s ON SCHEMA %I FROM %I', what, held.nsp, held.grantee_name)\n        \
         WHEN 'table' THEN format('REVOKE %s ON TABLE %I.%I FROM %I',\n          \
         what, held.nsp, held.obj, held.grantee_name)\n        \
         WHEN 'column' THEN format('REVOKE %s (%I) ON TABLE %I.%I FROM %I',\n          \
         what, held.col, held.nsp, held.obj, held.grantee_name)\n        \
         WHEN 'sequence' THEN format('REVOKE %s ON SEQUENCE %I.%I FROM %I',\n          \
         what, held.nsp, held.obj, held.grantee_name)\n        \
         -- regprocedure prints the quoted name with its argument types, as overloads need.\n        \
         WHEN 'function' THEN format('REVOKE %s ON ROUTINE %s FROM %I',\n          \
         what, held.fn::pg_catalog.regprocedure, held.grantee_name)\n        \
         ELSE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I REVOKE %s ON %s FROM %I',\n          \
         current_user, held.nsp, what,\n          \
         CASE held.kind WHEN 'default-tables' THEN 'TABLES'\n            \
         WHEN 'default-sequences' THEN 'SEQUENCES' ELSE 'FUNCTIONS' END,\n          \
         held.grantee_name)\n      \
         END;\n      \
         IF pass = 1 THEN\n        \
         BEGIN\n          \
         -- A superuser's REVOKE acts as the owner, which takes back only the owner's grants;\n          \
         -- one made by another role (holding a grant option) is taken back as that role.\n          \
         IF held.grantor <> held.owner THEN\n            \
         EXECUTE format('SET LOCAL ROLE %I', held.grantor_name);\n          \
         END IF;\n          \
         PERFORM pg_temp.dbward_change(revoke_sql);\n          \
         EXECUTE format('SET LOCAL ROLE %I', runner);\n        \
         EXCEPTION WHEN insufficient_privilege OR dependent_privilege_descriptors_still_exist THEN\n          \
         NULL; -- Reported in pass 2, with what to do; the role switch is undone with the error.\n        \
         END;\n      \
         ELSE\n        \
         RAISE WARNING 'setup.sql could not revoke a privilege the manifest does not declare: %', revoke_sql\n          \
         USING HINT = format('it was granted by %s, or passed on to others: run that statement as %s '\n            \
         || '(with CASCADE if %s passed it on, which also takes it from those it was passed to), '\n            \
         || 'then run setup.sql again',\n            \
         held.grantor_name, held.grantor_name, held.grantee_name);\n      \
         END IF;\n    \
         END LOOP;\n    \
         -- Nothing held in pass 1: pass 2 would read the same catalog and find nothing.\n    \
         EXIT WHEN NOT held_any;\n  \
         END LOOP;\n",
        managed = super::text_array(&managed),
        declared = declared_relation(&rows),
    );
    out.push_str(
        "-- Converge privileges: revoke what the roles above hold on this database's objects\n\
         -- (the database, schemas, tables and their columns, sequences, functions, and this\n\
         -- role's default privileges) that the manifest does not declare, whether it was removed\n\
         -- from the manifest or granted by hand. The GRANTs below add what is missing, in the\n\
         -- same transaction. PUBLIC, owners and roles the manifest does not declare are left alone.\n",
    );
    let tag = quote::dollar_tag(&body);
    let _ = write!(
        out,
        "DO {tag}\nDECLARE\n  runner name := current_user;\n  pass integer;\n  held record;\n  held_any boolean := false;\n  what text;\n  revoke_sql text;\nBEGIN\n{body}END\n{tag};\n\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_tables_grants_declare_the_tables_and_the_default_privileges() {
        let grant = Grant {
            privileges: vec![Privilege::Insert, Privilege::All],
            on: ObjectKind::AllTables,
            schema: Some("s".into()),
            object: None,
        };
        let rows = declared("w", &grant);
        let summary: Vec<(&str, Option<&str>, &str)> = rows
            .iter()
            .map(|r| (r.kind, r.schema.as_deref(), r.privilege))
            .collect();
        assert_eq!(
            summary,
            [
                ("table", Some("s"), "INSERT"),
                ("table", Some("s"), "ALL"),
                ("default-tables", Some("s"), "INSERT"),
                ("default-tables", Some("s"), "ALL"),
            ]
        );
        assert!(rows.iter().all(|r| r.object.is_none() && r.grantee == "w"));
    }

    #[test]
    fn named_objects_and_the_database_declare_one_row_per_privilege() {
        let table = Grant {
            privileges: vec![Privilege::Select],
            on: ObjectKind::Table,
            schema: None,
            object: Some("it's".into()),
        };
        let rows = declared("r", &table);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].kind,
                rows[0].schema.as_deref(),
                rows[0].object.as_deref()
            ),
            ("table", Some("public"), Some("it's"))
        );
        let database = Grant {
            privileges: vec![Privilege::Connect, Privilege::Temporary],
            on: ObjectKind::Database,
            schema: None,
            object: None,
        };
        let rows = declared("r", &database);
        assert_eq!(
            rows.iter().map(|r| r.privilege).collect::<Vec<_>>(),
            ["CONNECT", "TEMPORARY"]
        );
        assert!(
            rows.iter()
                .all(|r| r.kind == "database" && r.schema.is_none())
        );
    }

    /// The first database of a small manifest with `body` inside it.
    fn database(body: &str) -> Database {
        let text = format!(
            "dbward version=1\nrelay {{\n    listen \"127.0.0.1:6432\"\n    \
             public-name \"db.localhost\"\n    client-cert-ttl \"1h\"\n}}\n\
             database shop {{\n    postgres host=\"127.0.0.1\"\n    self-hosted {{\n        \
             server-names \"127.0.0.1\"\n        config-dir \"/etc/pg\"\n    }}\n{body}}}\n"
        );
        let checked = crate::check(&crate::source::Source::new("m.kdl", text));
        let model = checked.model.expect("the test manifest compiles");
        model.databases.into_values().next().expect("one database")
    }

    #[test]
    fn the_admin_user_is_never_managed_and_no_managed_role_means_no_block() {
        let mut out = String::new();
        revoke_undeclared(&mut out, &database("    admin-user \"dbward-admin\"\n"));
        assert_eq!(out, "");
        revoke_undeclared(
            &mut out,
            &database(
                "    admin-user \"dbward-admin\"\n    db-role reader {\n        \
                 grant CONNECT on=database\n    }\n    db-user app {\n        member-of reader\n    }\n",
            ),
        );
        assert!(
            out.contains("ANY (ARRAY['reader', 'app']::text[])"),
            "{out}"
        );
        assert!(!out.contains("'dbward-admin'"), "{out}");
        assert!(out.contains("('reader', 'database', NULL::text, NULL::text, 'CONNECT')"));
    }

    #[test]
    fn declared_relations_quote_their_values_and_may_be_empty() {
        assert!(declared_relation(&[]).ends_with("WHERE false)"));
        let row = Declared {
            grantee: "o'r".into(),
            kind: "schema",
            schema: Some("my schema".into()),
            object: None,
            privilege: "USAGE",
        };
        assert_eq!(
            declared_relation(&[row]),
            "(VALUES\n          ('o''r', 'schema', 'my schema', NULL::text, 'USAGE'))"
        );
    }
}
