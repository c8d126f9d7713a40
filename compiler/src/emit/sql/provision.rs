//! The part of setup.sql that installs automatic user provisioning: the `dbward` schema, owned by
//! the database's admin user, with the functions the relay calls through its admin connection.
//!
//! They are installed once, by `apply`, never created per connection (Teleport creates its
//! procedures in `pg_temp` on every connection, and each new failure mode of that reached its
//! users). The relay only calls them:
//!
//! | call | what it does | returns |
//! |---|---|---|
//! | `dbward.activate(person, mode, roles, grants)` | creates the user (`LOGIN`, member of `dbward-auto-user`) or re-enables it, and converges it to exactly `roles` and `grants` | `created` / `activated` |
//! | `dbward.deactivate(person, ending_pid)` | strips every role and privilege, `NOLOGIN` | `deactivated` / `in-use` / `absent` |
//! | `dbward.drop(person, ending_pid)` | strips, then `DROP ROLE`; on 2BP01 keeps it stripped and locked | `dropped` / `deactivated` / `in-use` / `absent` |
//! | `dbward.sweep(settle)` | retires every `LOGIN` member of `dbward-auto-user` with no session, per its mode | rows `(person, mode, outcome)` |
//! | `dbward.sessions(person)` | the person's backends on the whole server | integer |
//!
//! Every one of them takes a transaction-scoped advisory lock on the person's name (so relays
//! and sessions serialize in the database, with no lock service of ours), then a second,
//! database-wide one before it changes any object privilege (two transactions granting on the
//! same table would otherwise fail with "tuple concurrently updated"). Errors are matched by
//! SQLSTATE, never by message text, and each function is idempotent. Every name is data: it
//! goes through `format('%I')`, and privilege keywords are checked against a fixed list before
//! they reach SQL text. The SQLSTATEs of our own, in class `WD` (user-defined classes start
//! with a letter after `H`):
//!
//! - `WD001`: a role of that name exists and is not a member of `dbward-auto-user` (or is the
//!   admin user, or a superuser): nothing is touched.
//! - `WD002`: an argument is invalid (a name that is empty or over 63 bytes, an unknown mode,
//!   a role that does not exist, a privilege that is not valid for its object kind).
//! - `WD003`: the person has other sessions, opened with different rights (the config changed
//!   since): the new session is refused, the open ones keep what they had.

use std::fmt::Write as _;

use crate::emit::quote::{self, ident, literal};
use crate::model::{Database, DatabaseKind, Grant, Model, Provision};

/// The first key of the per-person advisory lock (`'dbw' 1`); the second is `hashtext(name)`.
pub const PERSON_LOCK: i32 = 0x6462_7701;
/// The first key of the database-wide lock taken before object privileges change; the second is 0.
pub const ACL_LOCK: i32 = 0x6462_7702;

/// Whether `db` needs the provisioning functions: someone is provisioned on it.
pub(super) fn needed(model: &Model, db: &Database) -> bool {
    db.admin_user.is_some()
        && model
            .access
            .of_database(&db.name)
            .any(|a| a.rights.provision != Provision::Off)
}

/// Appends to `out` what the admin user needs in order to provision (membership rights on the
/// roles it grants on PostgreSQL 16+, grant options on the objects, CONNECT) and the functions.
pub(super) fn install(out: &mut String, model: &Model, db: &Database) {
    let Some(admin) = &db.admin_user else {
        return;
    };
    let admin_ident = ident(&admin.name);
    let mut roles: Vec<String> = Vec::new();
    let mut grants: Vec<&Grant> = Vec::new();
    for entry in model.access.of_database(&db.name) {
        if entry.rights.provision == Provision::Off {
            continue;
        }
        roles.extend(entry.rights.db_roles.iter().cloned());
        for grant in &entry.rights.permissions {
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
    }
    roles.sort();
    roles.dedup();
    let platform: &[&str] = match db.kind {
        // RDS accepts an IAM token as the password only from members of rds_iam.
        DatabaseKind::AwsRds { .. } => &["rds_iam"],
        _ => &[],
    };

    out.push_str(
        "-- Automatic user provisioning. The relay calls the functions of schema `dbward` as the\n\
         -- admin user; what that user needs for them comes first, and each thing is done only\n\
         -- when it is not so already.\n",
    );
    let mut body = String::new();
    // Before PostgreSQL 16, CREATEROLE may grant any non-superuser role; from 16 on it needs
    // ADMIN OPTION on each. A manifest that does not say its version gets the 16+ form, which
    // PostgreSQL 15 accepts too.
    if db.postgres.version.is_none_or(|v| v >= 16) {
        let mut granted: Vec<&str> = vec![super::AUTO_USER_GROUP];
        granted.extend(platform.iter().copied());
        granted.extend(roles.iter().map(String::as_str));
        let list: Vec<String> = granted.iter().map(|r| ident(r)).collect();
        let names: Vec<String> = granted.iter().map(|r| literal(r)).collect();
        let _ = writeln!(
            body,
            "  -- PostgreSQL 16+: the admin user may grant only roles it holds WITH ADMIN OPTION.\n  \
             IF EXISTS (SELECT FROM unnest(ARRAY[{names}]::text[]) AS wanted(name)\n      \
             WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_auth_members m\n        \
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid\n        \
             JOIN pg_catalog.pg_roles u ON u.oid = m.member\n        \
             WHERE g.rolname = wanted.name AND u.rolname = {admin_literal} AND m.admin_option)) THEN\n    \
             {}\n  \
             END IF;",
            super::change(&format!(
                "GRANT {} TO {admin_ident} WITH ADMIN OPTION",
                list.join(", ")
            )),
            names = names.join(", "),
            admin_literal = literal(&admin.name),
        );
    }
    let connect = Grant {
        privileges: vec![crate::model::Privilege::Connect],
        on: crate::model::ObjectKind::Database,
        schema: None,
        object: None,
    };
    body.push_str("  -- The admin user connects to every database name it provisions in.\n");
    for statement in super::grant_sql(
        &connect,
        &admin_ident,
        &literal(&admin_ident),
        super::Future::Included,
        super::GrantOption::Without,
    ) {
        let _ = writeln!(body, "  {statement}");
    }
    if !grants.is_empty() {
        body.push_str(
            "  -- It grants provisioned users only what it holds WITH GRANT OPTION: the permissions\n  \
             -- the manifest gives provisioned people on this database (objects created later by\n  \
             -- others need setup.sql to run again; activate warns about what it could not grant).\n",
        );
        for grant in grants {
            for statement in super::grant_sql(
                grant,
                &admin_ident,
                &literal(&admin_ident),
                super::Future::Included,
                super::GrantOption::With,
            ) {
                let _ = writeln!(body, "  {statement}");
            }
        }
    }
    out.push_str(&quote::do_block(&body));
    out.push('\n');

    let platform_array = {
        let items: Vec<String> = platform.iter().map(|r| literal(r)).collect();
        format!("ARRAY[{}]::text[]", items.join(", "))
    };
    let admin_literal = literal(&admin.name);
    out.push_str(
        "-- The schema, its bookkeeping table and the functions, owned by the admin user and closed\n\
         -- to everyone else. A function is replaced only when its source differs (its first line\n\
         -- repeats its signature, so any change to it shows); replacing keeps owner and privileges.\n",
    );
    let mut body = String::new();
    let owned_by_admin = |kind: &str, owner_sql: &str, alter: &str| {
        format!(
            "  IF ({owner_sql}) IS DISTINCT FROM {admin_role}::pg_catalog.regrole THEN\n    \
             {}\n  END IF;\n",
            super::change(&format!("ALTER {kind} {alter} OWNER TO {admin_ident}")),
            admin_role = literal(&admin_ident),
        )
    };
    let closed = |acl_sql: &str, revoke: &str| {
        format!(
            "  IF EXISTS (SELECT FROM pg_catalog.aclexplode(({acl_sql})) a WHERE a.grantee = 0) THEN\n    \
             {}\n  END IF;\n",
            super::change(revoke)
        )
    };
    let schema_oid = "SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = 'dbward'";
    let _ = write!(
        body,
        "  IF NOT EXISTS ({schema_oid}) THEN\n    {}\n  END IF;\n",
        super::change(&format!("CREATE SCHEMA dbward AUTHORIZATION {admin_ident}"))
    );
    body.push_str(&owned_by_admin(
        "SCHEMA",
        "SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'dbward'",
        "dbward",
    ));
    body.push_str(&closed(
        "SELECT n.nspacl FROM pg_catalog.pg_namespace n WHERE n.nspname = 'dbward'",
        "REVOKE ALL ON SCHEMA dbward FROM PUBLIC",
    ));
    let _ = write!(
        body,
        "  -- One row per provisioned user: its mode (read by the sweep) and the rights of its last\n  \
         -- activation (a second session must not silently change the first one's rights).\n  \
         IF pg_catalog.to_regclass('dbward.provisioned') IS NULL THEN\n    {}\n  END IF;\n",
        super::change(
            "CREATE TABLE dbward.provisioned (\n  \
             role_name text PRIMARY KEY,\n  \
             mode text NOT NULL CHECK (mode IN ('keep', 'best-effort-drop')),\n  \
             rights jsonb,\n  \
             activated_at timestamptz NOT NULL\n)"
        )
    );
    body.push_str(&owned_by_admin(
        "TABLE",
        "SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass('dbward.provisioned')",
        "dbward.provisioned",
    ));
    body.push_str(&closed(
        "SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass('dbward.provisioned')",
        "REVOKE ALL ON TABLE dbward.provisioned FROM PUBLIC",
    ));
    for (signature, source) in FUNCTIONS {
        let source = source
            .replace("@PERSON_LOCK@", &PERSON_LOCK.to_string())
            .replace("@ACL_LOCK@", &ACL_LOCK.to_string())
            .replace("@PLATFORM_ROLES@", &platform_array)
            .replace("@ADMIN@", &admin_literal);
        // The first line of the source repeats the signature, so comparing sources also
        // notices a changed return type, volatility or setting.
        let source = format!("\n-- dbward.{}{source}", signature.replace('\n', " "));
        let tag = quote::dollar_tag(&source);
        let name = arguments_only(signature);
        let procedure = literal(&format!("dbward.{name}"));
        let _ = write!(
            body,
            "  source := {tag}{source}{tag};\n  \
             IF NOT EXISTS (SELECT FROM pg_catalog.pg_proc p\n      \
             WHERE p.oid = pg_catalog.to_regprocedure({procedure}) AND p.prosrc = source) THEN\n    \
             PERFORM pg_temp.dbward_change(\n      \
             {} || pg_catalog.quote_literal(source),\n      \
             {});\n  END IF;\n",
            literal(&format!("CREATE OR REPLACE FUNCTION dbward.{signature} ")),
            literal(&format!(
                "CREATE OR REPLACE FUNCTION dbward.{name} -- the source as in setup.sql"
            )),
        );
        body.push_str(&owned_by_admin(
            "FUNCTION",
            &format!(
                "SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = pg_catalog.to_regprocedure({procedure})"
            ),
            &format!("dbward.{name}"),
        ));
        // A function is created executable by PUBLIC (a NULL ACL means the default one).
        let _ = write!(
            body,
            "  IF EXISTS (SELECT FROM pg_catalog.pg_proc p\n      \
             WHERE p.oid = pg_catalog.to_regprocedure({procedure})\n        \
             AND (p.proacl IS NULL OR EXISTS (\n          \
             SELECT FROM pg_catalog.aclexplode(p.proacl) a WHERE a.grantee = 0))) THEN\n    \
             {}\n  END IF;\n",
            super::change(&format!("REVOKE ALL ON FUNCTION dbward.{name} FROM PUBLIC"))
        );
    }
    let tag = quote::dollar_tag(&body);
    let _ = writeln!(
        out,
        "DO {tag}\nDECLARE\n  source text;\nBEGIN\n{body}END\n{tag};"
    );
}

/// `name(a text, b int DEFAULT 1) RETURNS …` → `name(text, int)`, as ALTER FUNCTION names it.
fn arguments_only(signature: &str) -> String {
    let name = &signature[..signature.find('(').unwrap_or(signature.len())];
    let inner = signature
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or("", |(args, _)| args);
    let types: Vec<&str> = inner
        .split(',')
        .filter_map(|arg| {
            let arg = arg.split(" DEFAULT").next().unwrap_or(arg).trim();
            arg.split_whitespace().nth(1)
        })
        .collect();
    format!("{name}({})", types.join(", "))
}

/// Every function: its signature with what follows up to `AS`, and its PL/pgSQL body. Bodies
/// run with a fixed `search_path` so no object of another schema can stand in for a catalog.
const FUNCTIONS: &[(&str, &str)] = &[
    (
        "check_name(person text) RETURNS void\n\
         LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS",
        r#"
BEGIN
  -- PostgreSQL silently truncates longer identifiers, which would provision another name.
  IF person IS NULL OR person = '' OR octet_length(person) > 63 THEN
    RAISE EXCEPTION USING ERRCODE = 'WD002',
      MESSAGE = format('cannot provision database user %L: the name must be 1 to 63 bytes long', person),
      HINT = 'rename the person in the manifest';
  END IF;
END
"#,
    ),
    (
        "ours(person text) RETURNS oid\n\
         LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS",
        r#"
DECLARE
  found_role record;
BEGIN
  -- The role of that name, or NULL; WD001 when it exists and is not one dbward provisions.
  SELECT r.oid, r.rolsuper INTO found_role FROM pg_roles r WHERE r.rolname = person;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF found_role.rolsuper OR person = @ADMIN@ OR person = current_user OR NOT EXISTS (
      SELECT FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
      WHERE m.member = found_role.oid AND g.rolname = 'dbward-auto-user') THEN
    RAISE EXCEPTION USING ERRCODE = 'WD001',
      MESSAGE = format('database role %I exists and is not a user dbward provisions (it is not a member of "dbward-auto-user"); dbward leaves it untouched', person),
      HINT = 'rename or drop that role, or log in as it without provisioning';
  END IF;
  RETURN found_role.oid;
END
"#,
    ),
    (
        "converge(me oid, person text, roles text[], grants jsonb) RETURNS void\n\
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS",
        r#"
DECLARE
  item record;
  acl_locked boolean := false;
  skipped text[] := '{}';
  failed text[] := '{}';
  version integer := current_setting('server_version_num')::integer;
  here oid := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
BEGIN
  -- Memberships: revoke every role but the group that is not wanted, grant the missing ones.
  FOR item IN
    SELECT DISTINCT g.rolname::text AS name
    FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
    WHERE m.member = me AND g.rolname <> 'dbward-auto-user' AND NOT (g.rolname = ANY (roles))
    ORDER BY 1
  LOOP
    EXECUTE format('REVOKE %I FROM %I', item.name, person);
  END LOOP;
  FOR item IN
    SELECT DISTINCT w.name FROM unnest(roles) AS w(name)
    WHERE NOT EXISTS (
      SELECT FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
      WHERE m.member = me AND g.rolname = w.name)
    ORDER BY 1
  LOOP
    EXECUTE format('GRANT %I TO %I', item.name, person);
  END LOOP;

  -- Object privileges: what is wanted (the grants, expanded over this database's catalog) and
  -- what is held (pg_shdepend lists every object whose ACL names the role), then the difference.
  FOR item IN
    -- The privileges each kind of object has; a grant's keywords must be among them.
    WITH valid(kind, privilege) AS (
      VALUES ('database', 'CREATE'), ('database', 'CONNECT'), ('database', 'TEMPORARY'),
        ('schema', 'USAGE'), ('schema', 'CREATE'),
        ('table', 'SELECT'), ('table', 'INSERT'), ('table', 'UPDATE'), ('table', 'DELETE'),
        ('table', 'TRUNCATE'), ('table', 'REFERENCES'), ('table', 'TRIGGER'),
        ('sequence', 'USAGE'), ('sequence', 'SELECT'), ('sequence', 'UPDATE'),
        ('function', 'EXECUTE')
      UNION ALL SELECT 'table', 'MAINTAIN' WHERE version >= 170000
    ),
    spec AS (
      SELECT g->>'on' AS kind, g->>'schema' AS nsp, g->>'object' AS obj, p AS privilege
      FROM jsonb_array_elements(coalesce(grants, '[]'::jsonb)) g,
           jsonb_array_elements_text(g->'privileges') p
    ),
    bad AS (
      SELECT s.* FROM spec s
      WHERE NOT EXISTS (SELECT FROM valid v WHERE v.kind = s.kind AND s.privilege IN ('ALL', v.privilege))
    ),
    wanted_privilege AS (
      SELECT s.kind, s.nsp, s.obj, v.privilege
      FROM spec s JOIN valid v ON v.kind = s.kind AND s.privilege IN ('ALL', v.privilege)
    ),
    wanted AS (
      SELECT 'database'::text AS kind, d.oid, format('DATABASE %I', d.datname) AS target, w.privilege
      FROM wanted_privilege w JOIN pg_database d ON d.oid = here
      WHERE w.kind = 'database'
      UNION ALL
      SELECT 'schema', n.oid, format('SCHEMA %I', n.nspname), w.privilege
      FROM wanted_privilege w JOIN pg_namespace n ON n.nspname = w.nsp
      WHERE w.kind = 'schema'
      UNION ALL
      -- Tables as GRANT ON ALL TABLES sees them: views, materialized, foreign, partitioned too.
      SELECT w.kind, c.oid,
             format('%s %I.%I', upper(w.kind), n.nspname, c.relname), w.privilege
      FROM wanted_privilege w
      JOIN pg_namespace n ON n.nspname = w.nsp
      JOIN pg_class c ON c.relnamespace = n.oid AND (w.obj IS NULL OR c.relname = w.obj)
      WHERE (w.kind = 'table' AND c.relkind IN ('r', 'p', 'v', 'm', 'f'))
         OR (w.kind = 'sequence' AND c.relkind = 'S')
      UNION ALL
      -- Functions by name: every overload; regprocedure prints the quoted name with its types.
      SELECT 'function', p.oid, format('ROUTINE %s', p.oid::regprocedure), w.privilege
      FROM wanted_privilege w
      JOIN pg_namespace n ON n.nspname = w.nsp
      JOIN pg_proc p ON p.pronamespace = n.oid AND p.prokind <> 'p'
        AND (w.obj IS NULL OR p.proname = w.obj)
      WHERE w.kind = 'function'
    ),
    deps AS (
      SELECT s.classid, s.objid, s.objsubid FROM pg_shdepend s
      WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = me AND s.deptype = 'a'
        AND (s.dbid = here OR (s.dbid = 0 AND s.classid = 'pg_database'::regclass AND s.objid = here))
    ),
    held AS (
      SELECT 'database'::text AS kind, d.oid, NULL::text AS col,
             format('DATABASE %I', d.datname) AS target, a.privilege_type AS privilege
      FROM deps JOIN pg_database d ON deps.classid = 'pg_database'::regclass AND d.oid = deps.objid,
           aclexplode(d.datacl) a
      WHERE a.grantee = me AND a.grantee <> d.datdba
      UNION ALL
      SELECT 'schema', n.oid, NULL, format('SCHEMA %I', n.nspname), a.privilege_type
      FROM deps JOIN pg_namespace n ON deps.classid = 'pg_namespace'::regclass AND n.oid = deps.objid,
           aclexplode(n.nspacl) a
      WHERE a.grantee = me AND a.grantee <> n.nspowner
      UNION ALL
      SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, c.oid, NULL,
             format('%s %I.%I', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                    n.nspname, c.relname),
             a.privilege_type
      FROM deps JOIN pg_class c ON deps.classid = 'pg_class'::regclass AND c.oid = deps.objid
      JOIN pg_namespace n ON n.oid = c.relnamespace,
           aclexplode(c.relacl) a
      WHERE deps.objsubid = 0 AND a.grantee = me AND a.grantee <> c.relowner
      UNION ALL
      -- Column privileges: never granted by dbward, so every one held is revoked.
      SELECT 'column', c.oid, att.attname::text, format('TABLE %I.%I', n.nspname, c.relname),
             a.privilege_type
      FROM deps JOIN pg_class c ON deps.classid = 'pg_class'::regclass AND c.oid = deps.objid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum = deps.objsubid,
           aclexplode(att.attacl) a
      WHERE deps.objsubid > 0 AND a.grantee = me AND a.grantee <> c.relowner
      UNION ALL
      SELECT 'function', p.oid, NULL, format('ROUTINE %s', p.oid::regprocedure), a.privilege_type
      FROM deps JOIN pg_proc p ON deps.classid = 'pg_proc'::regclass AND p.oid = deps.objid,
           aclexplode(p.proacl) a
      WHERE a.grantee = me AND a.grantee <> p.proowner
    )
    SELECT 0 AS step, 'bad' AS action, b.kind AS target, NULL::text AS col, b.privilege
    FROM bad b
    UNION ALL
    SELECT 1, 'revoke', h.target, h.col, h.privilege FROM held h
    WHERE h.col IS NOT NULL OR NOT EXISTS (
      SELECT FROM wanted w WHERE w.kind = h.kind AND w.oid = h.oid AND w.privilege = h.privilege)
    UNION ALL
    SELECT 2,
           CASE WHEN CASE w.kind
               WHEN 'database' THEN has_database_privilege(w.oid, w.privilege || ' WITH GRANT OPTION')
               WHEN 'schema' THEN has_schema_privilege(w.oid, w.privilege || ' WITH GRANT OPTION')
               WHEN 'table' THEN has_table_privilege(w.oid, w.privilege || ' WITH GRANT OPTION')
               WHEN 'sequence' THEN has_sequence_privilege(w.oid, w.privilege || ' WITH GRANT OPTION')
               ELSE has_function_privilege(w.oid, w.privilege || ' WITH GRANT OPTION')
             END THEN 'grant' ELSE 'skip' END,
           w.target, NULL, w.privilege
    FROM (SELECT DISTINCT * FROM wanted) w
    WHERE NOT EXISTS (
      SELECT FROM held h WHERE h.col IS NULL AND h.kind = w.kind AND h.oid = w.oid
        AND h.privilege = w.privilege)
    ORDER BY 1, 3, 4, 5
  LOOP
    IF item.action = 'bad' THEN
      RAISE EXCEPTION USING ERRCODE = 'WD002',
        MESSAGE = format('cannot grant %L on %L to a provisioned user: not a privilege of that kind of object',
                         item.privilege, item.target),
        HINT = 'recompile the relay''s config with `dbward apply`';
    ELSIF item.action = 'skip' THEN
      skipped := skipped || format('%s ON %s', item.privilege, item.target);
      CONTINUE;
    END IF;
    IF NOT acl_locked THEN
      -- Two transactions changing the ACL of one object collide ("tuple concurrently updated"):
      -- every change of object privileges by dbward takes this lock first.
      PERFORM pg_advisory_xact_lock(@ACL_LOCK@, 0);
      acl_locked := true;
    END IF;
    BEGIN
      IF item.action = 'grant' THEN
        EXECUTE format('GRANT %s ON %s TO %I', item.privilege, item.target, person);
      ELSIF item.col IS NOT NULL THEN
        EXECUTE format('REVOKE %s (%I) ON %s FROM %I', item.privilege, item.col, item.target, person);
      ELSE
        EXECUTE format('REVOKE %s ON %s FROM %I', item.privilege, item.target, person);
      END IF;
    EXCEPTION WHEN insufficient_privilege THEN
      -- Granted by someone the admin user cannot act for: reported below, the rest goes on.
      failed := failed || format('%s %s ON %s', upper(item.action), item.privilege, item.target);
    END;
  END LOOP;
  IF cardinality(skipped) > 0 THEN
    RAISE WARNING 'dbward could not grant % to %: the admin user % does not hold it WITH GRANT OPTION',
      array_to_string(skipped, ', '), quote_ident(person), quote_ident(current_user)
      USING HINT = 'run the setup.sql dbward apply wrote for this database again (objects created after it ran are not covered)';
  END IF;
  IF cardinality(failed) > 0 THEN
    RAISE WARNING 'dbward could not %: the privilege was granted by a role the admin user cannot act for',
      array_to_string(failed, ', ')
      USING HINT = format('revoke it as the role that granted it from %I', person);
  END IF;
END
"#,
    ),
    (
        "retire(me oid, person text, drop_it boolean) RETURNS text\n\
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS",
        r#"
BEGIN
  -- The caller holds the person's lock and has checked the role is ours and unused.
  PERFORM dbward.converge(me, person, '{}'::text[], '[]'::jsonb);
  IF (SELECT r.rolcanlogin FROM pg_roles r WHERE r.oid = me) THEN
    EXECUTE format('ALTER ROLE %I NOLOGIN', person);
  END IF;
  UPDATE dbward.provisioned p SET rights = NULL WHERE p.role_name = person AND p.rights IS NOT NULL;
  IF drop_it THEN
    BEGIN
      EXECUTE format('DROP ROLE %I', person);
      DELETE FROM dbward.provisioned p WHERE p.role_name = person;
      RETURN 'dropped';
    EXCEPTION WHEN dependent_objects_still_exist THEN
      -- It owns objects (or holds privileges elsewhere): it stays, stripped and locked, and
      -- the person's next session reuses it.
      RETURN 'deactivated';
    END;
  END IF;
  RETURN 'deactivated';
END
"#,
    ),
    (
        "activate(person text, mode text, roles text[], grants jsonb) RETURNS text\n\
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS",
        r#"
DECLARE
  me oid;
  wanted_roles text[];
  missing text;
  rights jsonb;
  outcome text := 'activated';
BEGIN
  PERFORM dbward.check_name(person);
  IF mode IS NULL OR mode NOT IN ('keep', 'best-effort-drop') THEN
    RAISE EXCEPTION USING ERRCODE = 'WD002',
      MESSAGE = format('unknown provisioning mode %L: expected keep or best-effort-drop', mode);
  END IF;
  PERFORM pg_advisory_xact_lock(@PERSON_LOCK@, hashtext(person));
  SELECT coalesce(array_agg(DISTINCT r ORDER BY r), '{}') INTO wanted_roles
  FROM unnest(coalesce(roles, '{}') || @PLATFORM_ROLES@) r
  WHERE r IS NOT NULL AND r <> 'dbward-auto-user';
  SELECT min(r) INTO missing FROM unnest(wanted_roles) r
  WHERE NOT EXISTS (SELECT FROM pg_roles x WHERE x.rolname = r);
  IF missing IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'WD002',
      MESSAGE = format('cannot provision %I: role %I does not exist', person, missing),
      HINT = 'run the setup.sql dbward apply wrote for this database, then connect again';
  END IF;
  rights := jsonb_build_object('mode', mode, 'roles', to_jsonb(wanted_roles),
                               'grants', coalesce(grants, '[]'::jsonb));
  me := dbward.ours(person);
  IF me IS NULL THEN
    BEGIN
      EXECUTE format('CREATE ROLE %I LOGIN', person);
    EXCEPTION WHEN duplicate_object THEN
      -- Created by someone else since we looked (not by dbward: we hold the lock).
      RAISE EXCEPTION USING ERRCODE = 'WD001',
        MESSAGE = format('database role %I was just created outside dbward; dbward leaves it untouched', person);
    END;
    EXECUTE format('GRANT %I TO %I', 'dbward-auto-user', person);
    me := (SELECT r.oid FROM pg_roles r WHERE r.rolname = person);
    outcome := 'created';
  ELSE
    -- Open sessions keep the rights they were opened with: a new one with other rights waits.
    -- A user already retired has none (a backend left is a session still exiting).
    IF (SELECT r.rolcanlogin FROM pg_roles r WHERE r.oid = me)
       AND EXISTS (SELECT FROM pg_stat_activity a WHERE a.usesysid = me)
       AND (SELECT p.rights FROM dbward.provisioned p WHERE p.role_name = person) IS DISTINCT FROM rights THEN
      RAISE EXCEPTION USING ERRCODE = 'WD003',
        MESSAGE = format('database user %I has other open sessions with different rights (the access rules changed since they opened)', person),
        HINT = 'close the other sessions, then connect again';
    END IF;
    IF NOT (SELECT r.rolcanlogin FROM pg_roles r WHERE r.oid = me) THEN
      EXECUTE format('ALTER ROLE %I LOGIN', person);
    END IF;
  END IF;
  PERFORM dbward.converge(me, person, wanted_roles, grants);
  INSERT INTO dbward.provisioned AS p (role_name, mode, rights, activated_at)
  VALUES (person, mode, rights, clock_timestamp())
  ON CONFLICT (role_name) DO UPDATE
    SET mode = excluded.mode, rights = excluded.rights, activated_at = excluded.activated_at;
  RETURN outcome;
END
"#,
    ),
    (
        "deactivate(person text, ending_pid integer DEFAULT NULL) RETURNS text\n\
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS",
        r#"
DECLARE
  me oid;
BEGIN
  PERFORM dbward.check_name(person);
  PERFORM pg_advisory_xact_lock(@PERSON_LOCK@, hashtext(person));
  me := dbward.ours(person);
  IF me IS NULL THEN
    RETURN 'absent';
  END IF;
  -- Another session (of any relay, on any database of the server) keeps the user as it is.
  IF EXISTS (SELECT FROM pg_stat_activity a WHERE a.usesysid = me AND a.pid IS DISTINCT FROM ending_pid) THEN
    RETURN 'in-use';
  END IF;
  RETURN dbward.retire(me, person, false);
END
"#,
    ),
    (
        "drop(person text, ending_pid integer DEFAULT NULL) RETURNS text\n\
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS",
        r#"
DECLARE
  me oid;
BEGIN
  PERFORM dbward.check_name(person);
  PERFORM pg_advisory_xact_lock(@PERSON_LOCK@, hashtext(person));
  me := dbward.ours(person);
  IF me IS NULL THEN
    RETURN 'absent';
  END IF;
  IF EXISTS (SELECT FROM pg_stat_activity a WHERE a.usesysid = me AND a.pid IS DISTINCT FROM ending_pid) THEN
    RETURN 'in-use';
  END IF;
  RETURN dbward.retire(me, person, true);
END
"#,
    ),
    (
        "sweep(settle interval DEFAULT interval '10 seconds') \
         RETURNS TABLE(person text, mode text, outcome text)\n\
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS",
        r#"
DECLARE
  item record;
BEGIN
  -- Users left LOGIN by a relay that stopped mid-session. One activated less than `settle` ago
  -- may be a session still connecting, and one whose lock is taken is being worked on: both
  -- are left for the next sweep. The lock is only tried, never waited for, so a sweep holding
  -- several never deadlocks with an activation.
  FOR item IN
    SELECT u.oid, u.rolname::text AS name, coalesce(p.mode, 'keep') AS mode, p.activated_at
    FROM pg_auth_members m
    JOIN pg_roles g ON g.oid = m.roleid AND g.rolname = 'dbward-auto-user'
    JOIN pg_roles u ON u.oid = m.member
    LEFT JOIN dbward.provisioned p ON p.role_name = u.rolname
    WHERE u.rolcanlogin AND NOT u.rolsuper AND u.rolname <> current_user AND u.rolname <> @ADMIN@
      AND NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.usesysid = u.oid)
    ORDER BY 2
  LOOP
    person := item.name;
    mode := item.mode;
    IF NOT pg_try_advisory_xact_lock(@PERSON_LOCK@, hashtext(item.name)) THEN
      outcome := 'busy';
    ELSIF item.activated_at > clock_timestamp() - settle THEN
      outcome := 'pending';
    ELSIF EXISTS (SELECT FROM pg_stat_activity a WHERE a.usesysid = item.oid)
       OR NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = item.oid AND r.rolcanlogin) THEN
      outcome := 'in-use';
    ELSE
      outcome := dbward.retire(item.oid, item.name, item.mode = 'best-effort-drop');
    END IF;
    RETURN NEXT;
  END LOOP;
END
"#,
    ),
    (
        "sessions(person text) RETURNS integer\n\
         LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS",
        r#"
  -- The person's backends on the whole server (every database, every relay).
  SELECT count(*)::integer FROM pg_stat_activity a
  JOIN pg_roles r ON r.oid = a.usesysid WHERE r.rolname = person
"#,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alter_function_names_argument_types_only() {
        assert_eq!(
            arguments_only("deactivate(person text, ending_pid integer DEFAULT NULL) RETURNS text"),
            "deactivate(text, integer)"
        );
        assert_eq!(
            arguments_only(
                "sweep(settle interval DEFAULT interval '10 seconds') RETURNS TABLE(a text)"
            ),
            "sweep(interval)"
        );
    }
}
