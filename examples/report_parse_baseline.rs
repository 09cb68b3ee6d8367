//! Benchmark baseline for `untaken report`: the least a reader of a JSON-lines grade file
//! must do, a line-by-line `serde_json` parse into `GradeRecord`, and nothing else.
//!
//! `cargo run --release --example report_parse_baseline -- FILE`
use std::io::BufRead;

use untaken::proto::v1::GradeRecord;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: report_parse_baseline FILE");
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let (mut line, mut ok, mut bad, mut score) = (Vec::new(), 0u64, 0u64, 0.0f64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        match serde_json::from_slice::<GradeRecord>(line.trim_ascii()) {
            Ok(g) => {
                ok += 1;
                score += g.score;
            }
            Err(_) => bad += 1,
        }
    }
    println!("{ok} grades parsed, {bad} not, score sum {score}");
    Ok(())
}
