#!/usr/bin/env bash
# `untaken report` benchmark: `bash benches/report.sh`. See BENCHMARKS.md, section "Report".
#
# Generates BENCH_REPORT_GRADES synthetic grades (examples/report_grades.rs, the issue's
# scenario) into a JSON-lines file, then times, side by side with farm-bench (median of
# BENCH_REPORT_RUNS runs, alternating A/B so a drifting machine hits both alike):
#   (r)  untaken report --grades FILE --label tenant --label language
#        --human-label human_verdict --eligibility-label reasoning_eligibility --json /dev/null
#   (p)  baseline: a plain line-by-line serde_json parse of the same file into GradeRecord
#        (examples/report_parse_baseline.rs): the least any JSON reader of this file does
#   (w)  yardstick: wc -l on the same file (reading it at all)
# Targets: (r) >= 300,000 grades/s, peak RSS < 128 MiB.
#
# Knobs: BENCH_REPORT_GRADES=1000000, BENCH_REPORT_RUNS=5, BENCH_SKIP_BUILD=1 (use target/release as is).
set -euo pipefail
cd "$(dirname "$0")/.."
GRADES=${BENCH_REPORT_GRADES:-1000000}
RUNS=${BENCH_REPORT_RUNS:-5}
TARGET=${CARGO_TARGET_DIR:-target}
OUT="$TARGET/bench/report"
mkdir -p "$OUT"
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
  cargo build --release --bin untaken --example report_grades --example report_parse_baseline
fi
BIN="$TARGET/release/untaken"
FILE="$OUT/grades-$GRADES.jsonl"
if [[ ! -s "$FILE" ]]; then
  "$TARGET/release/examples/report_grades" "$FILE" "$GRADES" essay 1
fi
N=$(wc -l < "$FILE")
SIZE=$(du -m "$FILE" | cut -f1)
echo "grades file: $FILE ($N lines, $SIZE MiB)"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' +uncommitted')"

REPORT_ARGS=(report --grades "$FILE" --label tenant --label language --human-label human_verdict --eligibility-label reasoning_eligibility --json /dev/null)
# The report exits 2 (a regression is flagged on this scenario): check it once, untimed.
set +e
"$BIN" "${REPORT_ARGS[@]}" > "$OUT/report.txt"
code=$?
set -e
[[ $code == 2 ]] || { echo "untaken report exited $code, expected 2 (see $OUT/report.txt)"; exit 1; }
head -5 "$OUT/report.txt"

echo
echo "== (r) untaken report vs (p) serde_json parse baseline =="
farm-bench -n "$RUNS" --timeout 1800 --vs "$TARGET/release/examples/report_parse_baseline $FILE" -- \
  sh -c "$BIN ${REPORT_ARGS[*]} >/dev/null; test \$? = 2" | tee "$OUT/report-vs-parse.txt"
echo
echo "== (r) untaken report vs (w) wc -l =="
farm-bench -n "$RUNS" --timeout 1800 --vs "wc -l $FILE" -- \
  sh -c "$BIN ${REPORT_ARGS[*]} >/dev/null; test \$? = 2" | tee "$OUT/report-vs-wc.txt"
echo
echo "throughput = $N grades / median wall seconds of (r); results in $OUT/"
