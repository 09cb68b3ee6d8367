//! `untaken demo`, run as a new user runs it: one command in an empty directory,
//! nothing else running. It must tell the whole story (the aggregate looks fine,
//! the 5% multi_step slice is flagged) and every number it prints must be what
//! the grades it wrote say.

use std::process::Command;

use serde_json::Value;

/// The number after `label` in `text`, e.g. `+13.5` in "... +13.5 points".
fn numbers_after<'a>(line: &'a str, label: &str) -> Vec<f64> {
    let rest = &line[line.find(label).unwrap_or_else(|| panic!("`{label}` in: {line}")) + label.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .filter(|t| !t.is_empty() && t.chars().any(|c| c.is_ascii_digit()))
        .map(|t| t.parse().unwrap_or_else(|_| panic!("`{t}` in: {line}")))
        .collect()
}

#[test]
fn demo_finds_the_loss_the_aggregate_hides_and_its_numbers_come_from_the_grades() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_untaken")).arg("demo").current_dir(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));

    // The ending: the overall figure is inside the noise, multi_step is flagged.
    let overall = stdout.lines().find(|l| l.starts_with("OVERALL:")).unwrap_or_else(|| panic!("no OVERALL line:\n{stdout}"));
    assert!(overall.contains("inside the noise"), "{overall}");
    let flagged: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FLAGGED")).collect();
    assert_eq!(flagged.len(), 1, "exactly one slice flagged:\n{stdout}");
    assert!(flagged[0].contains("hidden") && flagged[0].contains("slice = multi_step"), "{}", flagged[0]);
    let page = dir.path().join("untaken-demo-report.html");
    assert!(stdout.contains(&format!("file://{}", std::fs::canonicalize(&page).unwrap().display())), "says where the page is");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("multi_step"), "the page names the flagged slice");

    // Recompute the printed figures from the grades file the demo wrote.
    let grades: Vec<Value> = std::fs::read_to_string(dir.path().join("untaken-demo-grades.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pairs = std::fs::read_to_string(dir.path().join("untaken-demo-pairs.jsonl")).unwrap().lines().count();
    assert_eq!(grades.len(), pairs, "one grade per pair");
    let is_pair = |g: &&Value| g.get("kind").is_none() && g["outcome"] == "GRADE_OUTCOME_GRADED";
    let score = |g: &Value| g.get("score").and_then(Value::as_f64).unwrap_or(0.0);
    let multi: Vec<&Value> = grades.iter().filter(is_pair).filter(|g| g["slice"] == "multi_step").collect();
    let mean = 100.0 * multi.iter().map(|g| score(g)).sum::<f64>() / multi.len() as f64;
    let printed = numbers_after(flagged[0], "pairs): `fast` answers ");
    assert!((printed[0] - mean).abs() < 0.051, "printed {} vs the grades' mean {mean:.2} over {} pairs", printed[0], multi.len());
    assert!(flagged[0].contains(&format!("{} pairs", multi.len())), "{}", flagged[0]);
    let all: Vec<&Value> = grades.iter().filter(is_pair).collect();
    let w = |g: &Value| g["sampling_weight"].as_f64().unwrap();
    let hajek = 100.0 * all.iter().map(|g| w(g) * score(g)).sum::<f64>() / all.iter().map(|g| w(g)).sum::<f64>();
    let printed = numbers_after(overall, "the route not taken is ");
    assert!((printed[0] - hajek).abs() < 0.051, "overall printed {} vs Σw·s/Σw {hajek:.2}", printed[0]);
    assert!(overall.contains(&format!("over {} graded pairs", all.len())), "{overall}");

    // The report on the demo's grades gates a CI job: exit code 2.
    let report = Command::new(env!("CARGO_BIN_EXE_untaken"))
        .args(["report", "--grades", "untaken-demo-grades.jsonl"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(report.status.code(), Some(2), "{}", String::from_utf8_lossy(&report.stdout));
}
