//! Writes synthetic grades (JSON lines, one `GradeRecord` each) for `untaken report`:
//! the benchmark's input, or a file to try the report on.
//!
//! `cargo run --release --example report_grades -- OUT [GRADES] [SCENARIO] [SEED]`
//! SCENARIO: `essay` (default: 15-point loss on the 5% multi_step slice), `null`, `tools`.
//! GRADES: about how many grades to write (the day is scaled to it; default 10,000).
use std::io::{BufWriter, Write};

use rand::rngs::StdRng;
use rand::SeedableRng;
use untaken::report::scenario::Scenario;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().expect("usage: report_grades OUT [GRADES] [essay|null|tools] [SEED]");
    let grades: f64 = args.get(1).map_or(10_000.0, |g| g.parse().expect("GRADES is a number"));
    let mut scenario = match args.get(2).map(String::as_str).unwrap_or("essay") {
        "essay" => Scenario::essay(),
        "null" => Scenario::null(),
        "tools" => Scenario::unlabelled_cohort(),
        other => panic!("unknown scenario {other}"),
    };
    let seed = args.get(3).map_or(1, |s| s.parse().expect("SEED is a number"));
    scenario.human_share = 0.05;
    scenario.requests = (grades / scenario.shadowed_share()).round() as usize;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut result = Ok(());
    let mut n = 0u64;
    scenario.generate(&mut rng, |g| {
        if result.is_ok() {
            n += 1;
            result = serde_json::to_writer(&mut w, &g).map_err(std::io::Error::other).and_then(|_| w.write_all(b"\n"));
        }
    });
    result?;
    w.flush()?;
    eprintln!("wrote {n} grades to {out}");
    Ok(())
}
