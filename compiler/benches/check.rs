//! Benchmark of `dbward check` on generated manifests (not a test): 10, 100, 1,000 and 5,000
//! databases with five people per database, reporting the time, the throughput, and where the
//! time goes — the KDL parser, the rest of the syntax phase (lowering to the AST), and
//! resolution (rules, model, access table).
//!
//! Run with `cargo bench -p dbward --bench check` (optimized build). The README's table
//! "Speed of `dbward check`" comes from this program's output. `DBWARD_BENCH_SIZES=10,100`
//! picks other sizes; `DBWARD_BENCH_DUMP=DIR` also writes the generated manifests there (to
//! profile `dbward check` on them); with `DBWARD_BENCH_DUMP_ONLY=1` it only writes them.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use dbward::source::Source;

/// People per database, as the goal states it (1,000 databases, 5,000 users).
const PEOPLE_PER_DATABASE: usize = 5;
/// Databases per team; a team's role reaches its team's databases.
const TEAM_SIZE: usize = 10;

/// A realistic manifest: self-hosted and RDS databases with labels, two db-roles and two
/// db-users each; one role per team, an on-call role over all production databases (held by one
/// person in a hundred), a developer role with a deny, and a provisioning analyst role.
fn manifest(databases: usize) -> String {
    let mut m = String::with_capacity(databases * 1_200);
    m.push_str(
        "dbward version=1\n\n\
         relay {\n    listen \"0.0.0.0:6432\"\n    public-name \"db.example.com\"\n    \
         client-cert-ttl \"12h\"\n}\n\n\
         cloud aws-prod {\n    aws account=\"123456789012\" region=\"us-east-1\"\n    \
         relay-role \"arn:aws:iam::123456789012:role/dbward-relay\"\n}\n\n",
    );
    for i in 0..databases {
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        let team = i / TEAM_SIZE;
        let _ = writeln!(m, "database db{i} {{");
        if i % 4 == 3 {
            let _ = writeln!(
                m,
                "    postgres host=\"db{i}.cluster-c9akciq32.us-east-1.rds.amazonaws.com\" port=5432 version=16\n    \
                 labels env={env} team=team{team}\n    \
                 aws-rds cloud=aws-prod resource-id=\"cluster-ABCDEFGHIJ{i:010}\""
            );
        } else {
            let _ = writeln!(
                m,
                "    postgres host=\"pg{i}.internal\" port=5432 version=15\n    \
                 labels env={env} team=team{team}\n    \
                 self-hosted {{\n        server-names \"pg{i}.internal\"\n        \
                 config-dir \"/etc/postgresql/15/main/dbward\"\n    }}"
            );
        }
        m.push_str(
            "    admin-user \"dbward-admin\"\n    \
             db-role reader {\n        grant CONNECT on=database\n        \
             grant USAGE on=schema schema=public\n        \
             grant SELECT on=all-tables schema=public\n    }\n    \
             db-role writer {\n        member-of reader\n        \
             grant INSERT UPDATE DELETE on=all-tables schema=public\n    }\n    \
             db-user app {\n        member-of writer\n    }\n    \
             db-user readonly {\n        member-of reader\n    }\n}\n\n",
        );
    }
    let teams = databases.div_ceil(TEAM_SIZE);
    for t in 0..teams {
        let _ = writeln!(
            m,
            "role team{t} {{\n    allow {{\n        databases team=team{t}\n        \
             db-users \"*\"\n        db-names \"*\"\n    }}\n}}\n"
        );
    }
    m.push_str(
        "role on-call {\n    allow {\n        databases env=prod\n        db-users readonly\n        \
         db-names \"*\"\n    }\n}\n\n\
         role developer {\n    allow {\n        databases env=dev\n        db-users app readonly\n        \
         db-names \"*\"\n    }\n    deny {\n        databases team=team0\n    }\n}\n\n\
         role analyst {\n    provision keep\n    allow {\n        databases env=prod\n        \
         db-names \"*\"\n        db-roles reader\n    }\n}\n\n",
    );
    for i in 0..databases * PEOPLE_PER_DATABASE {
        let team = i / (PEOPLE_PER_DATABASE * TEAM_SIZE);
        let extra = match i % 100 {
            0 => " on-call",
            1 => " analyst",
            2 => " developer",
            _ => "",
        };
        let _ = writeln!(m, "user person{i} {{\n    roles team{team}{extra}\n}}\n");
    }
    m
}

/// CPU time this process has used (all threads, including finished ones), from
/// /proc/self/stat. On a shared machine wall-clock time includes waiting for a core; CPU time
/// is the work itself. Resolution: one clock tick (10 ms), so runs are repeated (see [`measure`]).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; utime and stime are the 14th and 15th fields.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// Runs `f` until at least `budget` of wall time has passed (and at least `min_runs` times),
/// and returns the mean wall time and mean CPU time of one run.
fn measure(min_runs: u32, budget: Duration, mut f: impl FnMut()) -> (Duration, Duration) {
    let wall = Instant::now();
    let cpu = cpu_time();
    let mut runs = 0u32;
    while runs < min_runs || wall.elapsed() < budget {
        f();
        runs += 1;
    }
    (wall.elapsed() / runs, cpu_time().saturating_sub(cpu) / runs)
}

fn ms(d: (Duration, Duration)) -> String {
    format!(
        "{:.1} ms ({:.0})",
        d.0.as_secs_f64() * 1_000.0,
        d.1.as_secs_f64() * 1_000.0
    )
}

fn main() {
    let sizes: Vec<usize> = std::env::var("DBWARD_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1_000, 5_000]);
    println!("Times are wall clock per run, with CPU time in parentheses (ms).\n");
    println!(
        "| databases | people | access entries | size | KDL parse | syntax (parse + AST) | resolve | check total | MB/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for databases in sizes {
        let text = manifest(databases);
        let source = Source::new(format!("generated-{databases}.kdl"), text.clone());

        // Sanity: the benchmark must measure the success path.
        let checked = dbward::check(&source);
        let Some(model) = checked.model.as_ref() else {
            let out = dbward::diag::render(
                &source,
                &checked.diagnostics[..3.min(checked.diagnostics.len())],
                100,
                false,
            );
            eprintln!("the generated manifest ({databases} databases) does not check:\n{out}");
            std::process::exit(1);
        };
        let entries = model.access.len();
        let people = model.users.len();

        if let Some(dir) = std::env::var_os("DBWARD_BENCH_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("generated-{databases}.kdl"));
            if let Err(err) = std::fs::write(&path, &text) {
                eprintln!("cannot write {}: {err}", path.display());
            }
            // `DBWARD_BENCH_DUMP_ONLY=1`: only write the manifests (to time the binaries on
            // them, as the README's "Speed of explain and diff" does).
            if std::env::var_os("DBWARD_BENCH_DUMP_ONLY").is_some() {
                continue;
            }
        }
        let min_runs = if databases >= 5_000 { 1 } else { 3 };
        let budget = Duration::from_millis(if databases >= 1_000 { 1 } else { 500 });
        let kdl = measure(min_runs, budget, || {
            black_box(text.parse::<kdl::KdlDocument>().is_ok());
        });
        let syntax = measure(min_runs, budget, || {
            black_box(dbward::syntax::parse(&source).manifest.is_some());
        });
        let parsed = dbward::syntax::parse(&source);
        let manifest = parsed.manifest.expect("parses");
        let resolve = measure(min_runs, budget, || {
            black_box(dbward::model::resolve(&manifest).0.is_some());
        });
        let total = measure(min_runs, budget, || {
            black_box(dbward::check(&source).model.is_some());
        });
        let mb = text.len() as f64 / 1_000_000.0;
        println!(
            "| {databases} | {people} | {entries} | {:.2} MB | {} | {} | {} | **{}** | {:.1} |",
            mb,
            ms(kdl),
            ms(syntax),
            ms(resolve),
            ms(total),
            mb / total.0.as_secs_f64()
        );
    }
}
