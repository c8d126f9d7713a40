//! The two functions at the top of setup.sql through which every change it makes goes, so that
//! the script executes only what is needed and says what it executed.
//!
//! `pg_temp.dbward_change(stmt)` executes one statement and then raises a `NOTICE` that starts
//! with [`NOTICE_PREFIX`]. `pg_temp.dbward_grant(…)` compares one GRANT with what the grantee
//! already holds (directly, in the catalogs' ACLs) and hands the statement to `dbward_change`
//! only when something is missing. Every other change in the script is guarded by its own
//! check of the catalogs (a role that is missing, attributes that differ, a function whose
//! source differs).
//!
//! This is the one implementation of convergence: `dbward plan --live` runs the script in a
//! transaction it rolls back and shows the notices, `dbward apply --live` runs it and commits,
//! and a person running it with psql sees the same notices. A second run raises none.
//!
//! The functions live in the session's temporary schema: nothing is left behind on the server,
//! and they must always be called schema-qualified (PostgreSQL never looks up functions in
//! `pg_temp` implicitly, which also means no other schema can stand in for them).

/// What every change notice starts with; `dbward plan --live` collects the notices by it.
pub const NOTICE_PREFIX: &str = "dbward change: ";

/// The definitions, written right after `BEGIN`.
pub(super) const PRELUDE: &str = r#"-- Every change below goes through pg_temp.dbward_change: it executes one statement, then
-- raises a NOTICE "dbward change: <statement>". Nothing that is already as the manifest
-- says is executed, so a second run raises no such notice. `dbward plan --live` runs this
-- script in a transaction it rolls back and shows these notices as the plan.
CREATE OR REPLACE FUNCTION pg_temp.dbward_change(stmt text, shown text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $dbward$
BEGIN
  EXECUTE stmt;
  RAISE NOTICE 'dbward change: %', coalesce(shown, stmt);
END
$dbward$;
-- Revoking a grant made by another role runs as that role: it must be able to call this too,
-- whatever default privileges this role has.
GRANT EXECUTE ON FUNCTION pg_temp.dbward_change(text, text) TO PUBLIC;
-- Runs a GRANT (stmt) only when the grantee lacks one of privs on one of the objects it names:
-- kind database, schema, table, sequence or function (obj NULL: every one in schema nsp), or
-- default-tables, default-sequences, default-functions (this role's default privileges in nsp).
-- 'ALL' means every privilege of the object's kind. A missing object or schema runs stmt, so
-- the server reports it as it always has.
CREATE OR REPLACE FUNCTION pg_temp.dbward_grant(kind text, nsp text, obj text, privs text[],
  grantee text, grantable boolean, stmt text)
RETURNS void LANGUAGE plpgsql AS $dbward$
DECLARE
  who oid := grantee::pg_catalog.regrole;
  runner oid := (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user);
  schema_oid oid := (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = nsp);
  version integer := current_setting('server_version_num')::integer;
  target_count integer;
  missing boolean;
BEGIN
  IF kind <> 'database' AND schema_oid IS NULL THEN
    PERFORM pg_temp.dbward_change(stmt);
    RETURN;
  END IF;
  WITH valid(of_kind, privilege) AS (
    VALUES ('database', 'CREATE'), ('database', 'CONNECT'), ('database', 'TEMPORARY'),
      ('schema', 'USAGE'), ('schema', 'CREATE'),
      ('table', 'SELECT'), ('table', 'INSERT'), ('table', 'UPDATE'), ('table', 'DELETE'),
      ('table', 'TRUNCATE'), ('table', 'REFERENCES'), ('table', 'TRIGGER'),
      ('sequence', 'USAGE'), ('sequence', 'SELECT'), ('sequence', 'UPDATE'),
      ('function', 'EXECUTE')
    UNION ALL SELECT 'table', 'MAINTAIN' WHERE version >= 170000
  ),
  -- The objects the GRANT names, each with its ACL, its owner and the kind its privileges are of.
  target(acl, owner, privilege_kind) AS (
    SELECT d.datacl, d.datdba, 'database' FROM pg_catalog.pg_database d
    WHERE kind = 'database' AND d.datname = pg_catalog.current_database()
    UNION ALL
    SELECT n.nspacl, n.nspowner, 'schema' FROM pg_catalog.pg_namespace n
    WHERE kind = 'schema' AND n.oid = schema_oid
    UNION ALL
    -- GRANT ON TABLE also names a sequence; ON ALL TABLES takes views and the like too.
    SELECT c.relacl, c.relowner, CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END
    FROM pg_catalog.pg_class c
    WHERE kind IN ('table', 'sequence') AND c.relnamespace = schema_oid
      AND CASE WHEN obj IS NOT NULL THEN c.relname = obj
               WHEN kind = 'table' THEN c.relkind IN ('r', 'p', 'v', 'm', 'f')
               ELSE c.relkind = 'S' END
    UNION ALL
    SELECT p.proacl, p.proowner, 'function' FROM pg_catalog.pg_proc p
    WHERE kind = 'function' AND p.pronamespace = schema_oid
      AND CASE WHEN obj IS NOT NULL THEN p.proname = obj ELSE p.prokind <> 'p' END
    UNION ALL
    SELECT da.defaclacl, NULL::oid,
      CASE kind WHEN 'default-tables' THEN 'table' WHEN 'default-sequences' THEN 'sequence'
        ELSE 'function' END
    FROM pg_catalog.pg_default_acl da
    WHERE kind LIKE 'default-%' AND da.defaclrole = runner AND da.defaclnamespace = schema_oid
      AND da.defaclobjtype = CASE kind WHEN 'default-tables' THEN 'r'
                               WHEN 'default-sequences' THEN 'S' ELSE 'f' END
  )
  SELECT count(*),
    bool_or(t.owner IS DISTINCT FROM who AND EXISTS (
      SELECT FROM valid v
      WHERE v.of_kind = t.privilege_kind
        AND (v.privilege = ANY (privs) OR 'ALL' = ANY (privs))
        AND NOT EXISTS (
          SELECT FROM pg_catalog.aclexplode(t.acl) a
          WHERE a.grantee = who AND a.privilege_type = v.privilege
            AND (a.is_grantable OR NOT grantable))))
  INTO target_count, missing
  FROM target t;
  -- A named object that is missing (or, for a function, overloaded) and a default privilege
  -- not set at all run the statement too.
  IF missing OR (obj IS NOT NULL AND target_count <> 1)
     OR (kind LIKE 'default-%' AND target_count = 0) THEN
    PERFORM pg_temp.dbward_change(stmt);
  END IF;
END
$dbward$;

"#;
