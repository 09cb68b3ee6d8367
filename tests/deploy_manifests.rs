//! Validates the Kubernetes deployment files in `deploy/` by running
//! `deploy/validate.sh`: it renders the kustomize base and overlays and checks
//! every document against strict Kubernetes schemas (the Strimzi KafkaTopic
//! against `deploy/schemas/kafkatopic.json`) plus the untaken sidecar
//! invariants. The first run installs pinned kustomize (Go) and
//! kubernetes-validate (pip) into `~/.cache/untaken/tools` (override with
//! `UNTAKEN_TOOLS`); if that is impossible the test fails with the reason,
//! it never skips.
//!
//! A second test feeds the deployed `untaken.toml` files (base and overlays)
//! to the crate's own config parser, which rejects unknown keys, and checks that
//! the worst-case memory each allows (`untaken check-config` prints it) fits the
//! untaken container's memory limit in `deploy/k8s/base/deployment.yaml`.

use std::fs;
use std::path::Path;
use std::process::Command;

/// The config files `deploy/validate.sh` renders into ConfigMaps.
const DEPLOYED_CONFIGS: &[&str] = &["deploy/k8s/base/untaken.toml", "deploy/k8s/overlays/example/untaken.toml"];
/// Where the pod mounts the Kafka SASL password (the parser reads it).
const DEPLOYED_PASSWORD_FILE: &str = "\"/etc/untaken/secrets/kafka-password\"";

#[test]
fn deploy_manifests_pass_validate_sh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("deploy").join("validate.sh");
    assert!(
        script.is_file(),
        "{} is missing: the deployment files cannot be validated",
        script.display()
    );

    let output = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("could not start `bash {}`: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");

    assert!(
        output.status.success(),
        "deploy/validate.sh failed ({}):\n{report}",
        output.status
    );
    // Guard against a script that exits 0 without checking anything.
    assert!(
        stdout.contains("check_manifests: OK") && stdout.contains("validate.sh: OK"),
        "deploy/validate.sh exited 0 but did not report a completed validation:\n{report}"
    );
    println!("{report}");
}

#[test]
fn deployed_configs_pass_the_config_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The parser reads the secrets it names: stand-ins for the pod's env and mount.
    for var in ["FAST_API_KEY", "REASONING_API_KEY"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "test-api-key");
        }
    }
    let dir = std::env::temp_dir().join(format!("untaken-deploy-manifests-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp dir");
    let password = dir.join("kafka-password");
    fs::write(&password, "test-password\n").expect("write stand-in password file");

    let limit = untaken_memory_limit(&root.join("deploy/k8s/base/deployment.yaml"));
    let mut failures = Vec::new();
    for rel in DEPLOYED_CONFIGS {
        let text = fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert!(
            text.contains(DEPLOYED_PASSWORD_FILE),
            "{rel}: expected sasl_password_file = {DEPLOYED_PASSWORD_FILE} (the Secret mount in deployment.yaml)"
        );
        let local = format!("\"{}\"", password.display().to_string().replace('\\', "\\\\"));
        match untaken::config::from_toml(&text.replace(DEPLOYED_PASSWORD_FILE, &local)) {
            Ok(config) => {
                let ceiling = untaken::memory::ceiling(&config);
                println!("{rel} (container limit {}):\n{ceiling}", untaken::memory::human(limit));
                if ceiling.total() > limit {
                    failures.push(format!(
                        "{rel}: the config allows {} but the untaken container's memory limit is {}; an outage \
                         can get it OOM-killed, losing what it holds:\n{ceiling}",
                        untaken::memory::human(ceiling.total()),
                        untaken::memory::human(limit)
                    ));
                }
            }
            Err(e) => failures.push(format!("{rel}: {e}")),
        }
    }
    let _ = fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "deployed config rejected by untaken::config:\n{}", failures.join("\n"));
}

/// `resources.limits.memory` of the container named `untaken` in a Deployment
/// manifest, in bytes. A line scan: the container's fields are the lines indented
/// deeper than its `- name: untaken`, up to the next item at that indentation.
fn untaken_memory_limit(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut lines = text.lines().skip_while(|l| l.trim() != "- name: untaken");
    let start = lines.next().unwrap_or_else(|| panic!("{}: no container named untaken", path.display()));
    let depth = indent(start);
    let memory = lines
        .take_while(|l| l.trim().is_empty() || indent(l) > depth)
        .skip_while(|l| l.trim() != "limits:")
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .unwrap_or_else(|| panic!("{}: the untaken container has no resources.limits.memory", path.display()));
    untaken::memory::parse_quantity(memory).unwrap_or_else(|| panic!("{}: memory limit `{memory}` is not a quantity", path.display()))
}
