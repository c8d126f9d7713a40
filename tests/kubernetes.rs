//! `relay { kubernetes … }`: the Kubernetes manifests `dbward apply` writes are valid for a
//! real schema validator, the Secret kustomize builds holds every file the relay needs and no
//! YAML holds a key, and the relay runs as the StatefulSet says (the example lists `peers`):
//! its peer id from its host name, the peer listener open, its arguments, as uid 65532,
//! from the Secret mounted as Kubernetes mounts one (root-owned, mode 0440, `..data`
//! symlinks), with its audit directory an emptyDir, answering the probes, draining on SIGTERM.
//!
//! The validator is `kubernetes-validate` (PyPI; the OpenAPI schemas of each Kubernetes
//! release): kubeconform is a GitHub download this machine cannot reach. The pod is emulated
//! in new mount, network and PID namespaces (`unshare`), so ports and paths are the test's own.

use std::path::Path;
use std::process::Command;

use dbward_tests::workspace_bin;

fn example_applied() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes.kdl");
    let out = Command::new(workspace_bin("dbward"))
        .args(["apply", manifest.to_str().unwrap(), "--out"])
        .arg(dir.path().join("out"))
        .arg("--auto-approve")
        .output()
        .expect("run dbward");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The files the kustomization's secretGenerator lists.
fn secret_files(kustomization: &str) -> Vec<String> {
    kustomization
        .split_once("  files:\n")
        .expect("a secretGenerator with files")
        .1
        .lines()
        .map_while(|line| line.strip_prefix("  - "))
        .map(|quoted| serde_json::from_str::<String>(quoted).expect("a quoted file name"))
        .collect()
}

#[test]
fn the_manifests_pass_a_kubernetes_schema_validator_and_hold_no_key() {
    let dir = example_applied();
    let relay = dir.path().join("out/relay");
    let yaml = [
        "statefulset.yaml",
        "service.yaml",
        "peers-service.yaml",
        "pdb.yaml",
    ]
    .map(|f| relay.join("kubernetes").join(f).display().to_string());
    // 1.30: the first release where the preStop `sleep` action is on by default.
    for version in ["1.30.0", "1.37.0"] {
        let validated = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .args(&yaml)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubernetes-validate is needed to check the generated manifests ({e}); \
                     install it with `pip install kubernetes-validate` (.ci/run does)"
                )
            });
        assert!(
            validated.status.success(),
            "Kubernetes {version} refuses the manifests:\n{}{}",
            String::from_utf8_lossy(&validated.stdout),
            String::from_utf8_lossy(&validated.stderr)
        );
    }

    // The Secret holds every file of the relay's directory, and nothing else.
    let kustomization = std::fs::read_to_string(relay.join("kustomization.yaml")).unwrap();
    let mut listed = secret_files(&kustomization);
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(&relay)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".yaml"))
        .collect();
    present.sort();
    assert_eq!(listed, present);
    assert!(listed.iter().any(|f| f == "server.key") && listed.iter().any(|f| f == "frozen.json"));
    for file in [relay.join("kustomization.yaml")]
        .into_iter()
        .chain(yaml.iter().map(Into::into))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a key",
            file.display()
        );
        assert!(!text.contains("BEGIN CERTIFICATE"), "{}", file.display());
    }
}

#[test]
fn the_relay_runs_in_the_pod_the_deployment_describes() {
    let dir = example_applied();
    let relay = dir.path().join("out/relay");
    // The example lists `peers`: a StatefulSet, whose pod dbward-relay-N is peer N.
    let deployment = std::fs::read_to_string(relay.join("kubernetes/statefulset.yaml")).unwrap();
    assert!(deployment.contains("kind: StatefulSet"), "{deployment}");
    let frozen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(relay.join("frozen.json")).unwrap()).unwrap();
    assert_eq!(
        frozen["relay"]["peers"]["members"],
        serde_json::json!([
            {"id": 0, "address": "dbward-relay-0.dbward-relay-peers.dbward.svc:6433"},
            {"id": 1, "address": "dbward-relay-1.dbward-relay-peers.dbward.svc:6433"},
            {"id": 2, "address": "dbward-relay-2.dbward-relay-peers.dbward.svc:6433"},
        ])
    );
    let args: Vec<String> = deployment
        .lines()
        .find_map(|line| line.trim().strip_prefix("args: "))
        .map(|json| serde_json::from_str(json).expect("args is a JSON list"))
        .expect("the container has args");
    let uid = deployment
        .lines()
        .find_map(|line| line.trim().strip_prefix("runAsUser: "))
        .expect("runAsUser")
        .to_owned();
    let mount = deployment
        .lines()
        .skip_while(|line| !line.contains("- name: config"))
        .find_map(|line| line.trim().strip_prefix("mountPath: "))
        .expect("the config mount")
        .to_owned();
    assert_eq!(args[1], format!("{mount}/frozen.json"), "{args:?}");

    // The Secret volume as the kubelet writes it: a timestamped directory of the files,
    // root-owned, group fsGroup, mode 0440 (defaultMode 288); `..data` points to it and each
    // file is a symlink through `..data`.
    let secret = dir.path().join("secret");
    let data = secret.join("..2026_11_30_00_00_00.000000001");
    std::fs::create_dir_all(&data).unwrap();
    let kustomization = std::fs::read_to_string(relay.join("kustomization.yaml")).unwrap();
    for file in secret_files(&kustomization) {
        std::fs::copy(relay.join(&file), data.join(&file)).unwrap();
        std::os::unix::fs::symlink(format!("..data/{file}"), secret.join(&file)).unwrap();
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), secret.join("..data")).unwrap();
    let sh = |script: &str| {
        let out = Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    sh(&format!(
        "chmod 755 {0} {1} {2} && chown -R 0:{uid} {2} && chmod 440 {2}/*",
        dir.path().display(),
        secret.display(),
        data.display()
    ));
    assert!(
        deployment.contains("defaultMode: 288") && deployment.contains("fsGroup: 65532"),
        "the test emulates 0440 and fsGroup 65532: {deployment}"
    );

    let audit_dir = deployment
        .lines()
        .skip_while(|line| !line.contains("- name: audit"))
        .find_map(|line| line.trim().strip_prefix("mountPath: "))
        .map(|json| serde_json::from_str::<String>(json).unwrap())
        .expect("an emptyDir for the audit log");
    let relay_bin = workspace_bin("dbward-relay");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        r#"set -eu
# The pod's host name is its name: the relay takes its peer id (1) from it.
hostname dbward-relay-1
ip link set lo up
# The mount points, made only if missing and removed again: nothing is left on the machine.
created=
for d in {mount} {audit_dir}; do
  [ -d "$d" ] || {{ mkdir -p "$d"; created="$created $d"; }}
done
cleanup() {{
  umount {mount} {audit_dir} 2>/dev/null || true
  for d in $created; do rmdir "$d"; done
}}
trap cleanup EXIT
mount --bind {secret} {mount}
mount -o remount,bind,ro {mount}
mount -t tmpfs -o mode=1777 tmpfs {audit_dir}
setpriv --reuid {uid} --regid {uid} --clear-groups -- {relay_bin} {args} 2>{log} &
pid=$!
ready=
for _ in $(seq 100); do
  if ready=$(curl -fsS http://127.0.0.1:9187/readyz 2>/dev/null); then break; fi
  sleep 0.1
done
echo "readyz: $ready"
echo "livez: $(curl -fsS http://127.0.0.1:9187/livez)"
echo "owner: $(ps -o uid= -p $pid | tr -d ' ')"
(exec 3<>/dev/tcp/127.0.0.1/6432) && echo "postgres port: open"
(exec 3<>/dev/tcp/127.0.0.1/6433) && echo "peers port: open"
kill -TERM $pid
status=0
wait $pid || status=$?
echo "exit after SIGTERM: $status"
"#,
        secret = secret.display(),
        relay_bin = relay_bin.display(),
        args = quoted.join(" "),
        log = dir.path().join("relay.log").display(),
    );
    let out = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--net",
            "--uts",
            "bash",
            "-c",
        ])
        .arg(&script)
        .output()
        .expect("run unshare (the test emulates a pod in namespaces of its own, as root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
    let context = format!(
        "{stdout}\n{}\nrelay log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("readyz: ready"), "{context}");
    assert!(stdout.contains("livez: ok"), "{context}");
    assert!(stdout.contains(&format!("owner: {uid}")), "{context}");
    assert!(stdout.contains("postgres port: open"), "{context}");
    assert!(stdout.contains("peers port: open"), "{context}");
    assert!(
        log.contains("accepting cancels forwarded by the other replicas")
            && log.contains("\"peer_id\":1"),
        "{context}"
    );
    assert!(stdout.contains("exit after SIGTERM: 0"), "{context}");
    // --log-format json, as the Deployment asks: one JSON object per line.
    let first = log.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "{context}"
    );
}
