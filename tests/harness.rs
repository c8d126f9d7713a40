//! The harness starts a real PostgreSQL, runs SQL through real psql, and cleans up.

use dbward_tests::Cluster;

#[test]
fn starts_a_real_postgres_and_runs_sql() {
    let mut cluster = Cluster::init();
    cluster.start();
    let version = cluster.sql("postgres", "show server_version_num");
    let version: u32 = version.trim().parse().expect("numeric server version");
    assert!(version >= 130000, "PostgreSQL {version} is too old");
    let root = cluster.root().to_owned();
    drop(cluster);
    assert!(!root.exists(), "the cluster's temp dir is removed on drop");
}
