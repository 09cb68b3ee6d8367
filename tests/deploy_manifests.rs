//! Validates the deployment files in `deploy/` by running `deploy/validate.sh`,
//! which uses the ecosystem's own tools: kustomize renders the base, the overlays
//! and deploy/monitoring; kubeconform checks every document strictly (Kubernetes
//! schemas shipped by kubernetes-validate, prometheus-operator's own CRD for
//! PrometheusRule, deploy/schemas/kafkatopic.json for KafkaTopic); kube-score lints the overlays; promtool checks the alert
//! rules and runs their unit tests; check_manifests.py checks the invariants that
//! are untaken's own; and this crate's `untaken check-config` parses the config
//! each rendered ConfigMap carries. The first run installs the pinned tools into
//! `~/.cache/untaken/tools` (override with `UNTAKEN_TOOLS`); if that is
//! impossible the test fails with the reason, it never skips.
//!
//! A second test breaks copies of deploy/ the ways a user could (a misspelt
//! field, a grace period shorter than the drain (also when spelt "40sec"), an
//! unknown config key, an alert that no longer fires; more judge replicas than partitions, a judge readiness
//! probe on the wrong path, a grades topic without its KafkaTopic or without
//! partitions, an unknown judge config key, a misspelt PrometheusRule field) and expects validate.sh to fail, naming what caught it.
//!
//! A third test checks that the worst-case memory each shipped `untaken.toml`
//! allows (`untaken check-config` prints it) fits the untaken container's memory
//! limit in `deploy/k8s/base/deployment.yaml`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// Runs deploy/validate.sh on `deploy_dir` with this build's binary.
fn validate(deploy_dir: &Path) -> (Output, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("deploy").join("validate.sh");
    assert!(script.is_file(), "{} is missing: the deployment files cannot be validated", script.display());
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .env("UNTAKEN_DEPLOY_DIR", deploy_dir)
        .env("UNTAKEN_BIN", env!("CARGO_BIN_EXE_untaken"))
        .output()
        .unwrap_or_else(|e| panic!("could not start `bash {}`: {e}", script.display()));
    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, report)
}

#[test]
fn deploy_manifests_pass_validate_sh() {
    let (output, report) = validate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"));
    assert!(output.status.success(), "deploy/validate.sh failed ({}):\n{report}", output.status);
    // Guard against a script that exits 0 without checking anything.
    for done in [
        "Invalid: 0, Errors: 0, Skipped: 0",
        "rules found",
        "every alert has a summary, a runbook in deploy/README.md and a promtool test that fires it",
        "check_manifests: OK (2 renderings)",
        "base.toml: ok (2 routes, sink Kafka)",
        "overlay-example.toml: ok (2 routes, sink Kafka)",
        "base-judge.toml: ok (judge pairwise, pairs untaken-pairs, grades untaken-grades)",
        "overlay-example-judge.toml: ok (judge pairwise, pairs untaken-pairs, grades untaken-grades)",
        "validate.sh: OK",
    ] {
        assert!(report.contains(done), "deploy/validate.sh exited 0 but did not report `{done}`:\n{report}");
    }
    println!("{report}");
}

/// One way a user could break deploy/: in `file`, `from` becomes `to`, and
/// validate.sh must fail with `expected` in its output.
struct Mistake {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    expected: &'static str,
}

const MISTAKES: &[Mistake] = &[
    Mistake {
        file: "k8s/base/deployment.yaml",
        from: "readOnlyRootFilesystem: true",
        to: "readOnlyRootFilesystem: true\n            readOnlyRootFilesytem: true",
        expected: "kubeconform: manifests do not match their schemas",
    },
    Mistake {
        file: "k8s/base/deployment.yaml",
        from: "terminationGracePeriodSeconds: 45",
        to: "terminationGracePeriodSeconds: 20",
        expected: "terminationGracePeriodSeconds 20 < server.shutdown_grace 30s",
    },
    // Any duration spelling untaken accepts is read as untaken reads it (no copy of its parser).
    Mistake {
        file: "k8s/base/untaken.toml",
        from: "shutdown_grace = \"30s\"",
        to: "shutdown_grace = \"40sec\"",
        expected: "terminationGracePeriodSeconds 45 < server.shutdown_grace 40s + 10s",
    },
    Mistake {
        file: "k8s/overlays/example/untaken.toml",
        from: "[pairing]",
        to: "[pairing]\ntimeout_typo = \"30s\"",
        expected: "untaken check-config rejects the untaken.toml rendered into overlay-example's ConfigMap",
    },
    Mistake {
        file: "k8s/base/judge-deployment.yaml",
        from: "replicas: 2",
        to: "replicas: 13",
        expected: "replicas 13 > 12 partitions of 'untaken-pairs': the extra judge replicas get no partition and idle",
    },
    Mistake {
        file: "k8s/base/judge-deployment.yaml",
        from: "path: /ready",
        to: "path: /metrics",
        expected: "readinessProbe must be httpGet /ready on the admin port 9465",
    },
    Mistake {
        file: "k8s/base/judge.toml",
        from: "grades_topic = \"untaken-grades\"",
        to: "grades_topic = \"untaken-grade\"",
        expected: "no KafkaTopic for kafka.grades_topic 'untaken-grade'",
    },
    Mistake {
        file: "k8s/base/judge.toml",
        from: "[limits]",
        to: "[limits]\nbudget_usd = 3.0",
        expected: "untaken check-config rejects the judge.toml rendered into base's judge ConfigMap",
    },
    // Strimzi's CRD leaves partitions optional; untaken's topics must set them.
    Mistake {
        file: "k8s/base/judge-kafkatopic.yaml",
        from: "  partitions: 12\n",
        to: "",
        expected: "spec.partitions must be set",
    },
    // Checked against prometheus-operator's own CRD (strict): a misspelt rule-group field.
    Mistake {
        file: "monitoring/prometheusrule.yaml",
        from: "    - name: untaken-judge",
        to: "    - name: untaken-judge\n      intervall: 1m",
        expected: "kubeconform: manifests do not match their schemas",
    },
    Mistake {
        file: "monitoring/prometheusrule.yaml",
        from: "/ (untaken_spool_max_bytes > 0)) > 0.5",
        to: "/ (untaken_spool_max_bytes > 0)) > 2",
        expected: "promtool test rules: deploy/monitoring/rules.test.yaml failed",
    },
];

#[test]
fn validate_sh_catches_each_kind_of_mistake_with_the_tool_meant_for_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for m in MISTAKES {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("deploy");
        let status = Command::new("cp").arg("-r").arg(root.join("deploy")).arg(&copy).status().unwrap();
        assert!(status.success(), "cp -r deploy failed");
        let path = copy.join(m.file);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(m.from), "{} no longer contains `{}`: update this test", m.file, m.from);
        fs::write(&path, text.replacen(m.from, m.to, 1)).unwrap();
        let (output, report) = validate(&copy);
        assert!(!output.status.success(), "validate.sh accepted {} with `{}`:\n{report}", m.file, m.to);
        assert!(report.contains(m.expected), "validate.sh failed, but not with `{}`:\n{report}", m.expected);
    }
}

/// The shipped configs (base and overlay), as deployed.
const DEPLOYED_CONFIGS: &[&str] = &["deploy/k8s/base/untaken.toml", "deploy/k8s/overlays/example/untaken.toml"];
/// Where the pod mounts the Kafka SASL password (the parser reads it).
const DEPLOYED_PASSWORD_FILE: &str = "\"/etc/untaken/secrets/kafka-password\"";

#[test]
fn shipped_configs_fit_the_container_memory_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("kafka-password");
    fs::write(&password, "test-password\n").expect("write stand-in password file");
    let limit = untaken_memory_limit(&root.join("deploy/k8s/base/deployment.yaml"));
    let mut failures = Vec::new();
    for rel in DEPLOYED_CONFIGS {
        let text = fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert!(text.contains(DEPLOYED_PASSWORD_FILE), "{rel}: expected sasl_password_file = {DEPLOYED_PASSWORD_FILE}");
        let local = format!("\"{}\"", password.display().to_string().replace('\\', "\\\\"));
        // The pod gets its API keys from a Secret through these variables; stand-ins here.
        for var in text.lines().filter_map(|l| l.trim().strip_prefix("api_key_env = \"")).filter_map(|r| r.split('"').next()) {
            std::env::set_var(var, "stand-in-key");
        }
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
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
