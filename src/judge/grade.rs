//! Builds the grade record (`untaken.v1.GradeRecord`) of a pair: what is copied and
//! summarised from the pair, why a pair could not be judged, and the score.
//!
//! Pure: a grade is a function of the pair, the verdicts and the clock reading
//! passed in. Scores are from the counterfactual's side, in [-1, 1]:
//! - pairwise: the mean of the two orders' results (win 1, tie 0, loss -1), so a
//!   judge's preference for a position cancels out (a judge that always answers "A"
//!   scores 0 with the orders disagreeing);
//! - reference: correct(counterfactual) - correct(primary).

use std::time::SystemTime;

use prost::Message;

use super::verdict::Raw;
use crate::config::Encoding;
use crate::proto::v1::{GradeOutcome, GradeRecord, JudgeInfo, PairRecord, PairStatus, ReferenceResult, Verdict};
use crate::record::{content_type, Encoded};

/// Bumped on incompatible changes to `GradeRecord`; also sent as a Kafka header.
pub const SCHEMA_VERSION: u32 = 1;
pub const SCHEMA_NAME: &str = "untaken.v1.GradeRecord";

/// Where the pair was read from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Which answer the judge saw as A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A = primary (the route taken), B = counterfactual.
    PrimaryFirst,
    /// A = counterfactual, B = primary.
    CounterfactualFirst,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::PrimaryFirst => "primary_first",
            Order::CounterfactualFirst => "counterfactual_first",
        }
    }
}

/// A verdict from the counterfactual's side: 1 win, 0 tie, -1 loss.
pub fn counterfactual_result(order: Order, raw: Raw) -> i32 {
    match (order, raw) {
        (_, Raw::Tie) => 0,
        (Order::PrimaryFirst, Raw::B) | (Order::CounterfactualFirst, Raw::A) => 1,
        (Order::PrimaryFirst, Raw::A) | (Order::CounterfactualFirst, Raw::B) => -1,
    }
}

/// The outcome of a pair that must not go to a judge: a half missing or failed.
pub fn unjudgeable(pair: &PairRecord) -> Option<(GradeOutcome, String)> {
    match pair.status() {
        PairStatus::PrimaryMissing | PairStatus::CounterfactualMissing => {
            let reason = if pair.status_reason.is_empty() { format!("{:?}", pair.status()) } else { pair.status_reason.clone() };
            return Some((GradeOutcome::Incomplete, reason));
        }
        PairStatus::Complete | PairStatus::Unspecified => {}
    }
    let p = pair.primary.as_ref().filter(|a| a.present);
    let c = pair.counterfactual.as_ref().filter(|a| a.present);
    let (Some(p), Some(c)) = (p, c) else {
        return Some((GradeOutcome::Incomplete, "a half is not present".into()));
    };
    let why = |a: &crate::proto::v1::AnswerRecord| if a.error.is_empty() { format!("http status {}", a.status_code) } else { a.error.clone() };
    match (super::features::failed(p), super::features::failed(c)) {
        (true, true) => Some((GradeOutcome::BothFailed, format!("primary: {}; counterfactual: {}", why(p), why(c)))),
        (true, false) => Some((GradeOutcome::PrimaryFailed, why(p))),
        (false, true) => Some((GradeOutcome::CounterfactualFailed, why(c))),
        (false, false) => None,
    }
}

fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The part of a grade that does not depend on the judge's verdict.
pub struct Summary {
    pub features: crate::proto::v1::RequestFeatures,
    pub primary: crate::proto::v1::HalfSummary,
    pub counterfactual: crate::proto::v1::HalfSummary,
}

/// A grade with everything but the verdict: outcome UNSPECIFIED until a `finish_*`.
pub fn base(pair: &PairRecord, summary: Summary, judge: JudgeInfo, origin: &Origin, now: SystemTime) -> GradeRecord {
    GradeRecord {
        schema_version: SCHEMA_VERSION,
        pair_id: pair.pair_id.clone(),
        request_id: pair.request_id.clone(),
        received_at: pair.received_at,
        graded_at: Some(timestamp(now)),
        slice: pair.slice.clone(),
        labels: pair.labels.clone(),
        sampling_rate: pair.sampling_rate,
        sampling_weight: pair.sampling_weight,
        kind: pair.kind,
        route_taken: pair.route_taken.clone(),
        route_not_taken: pair.route_not_taken.clone(),
        features: Some(summary.features),
        primary: Some(summary.primary),
        counterfactual: Some(summary.counterfactual),
        judge: Some(judge),
        pair_topic: origin.topic.clone(),
        pair_partition: origin.partition,
        pair_offset: origin.offset,
        ..Default::default()
    }
}

/// Marks a grade as not judged, with why.
pub fn finish_unjudged(grade: &mut GradeRecord, outcome: GradeOutcome, error: String) {
    grade.set_outcome(outcome);
    grade.error = error;
    grade.score = 0.0;
}

/// One order's verdict, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderVerdict {
    pub order: Order,
    pub raw: Result<Raw, String>,
    pub attempts: u32,
    pub latency_ms: f64,
    pub cost_usd: f64,
}

/// Sets outcome, verdicts, score and agreement from both orders' verdicts.
pub fn finish_pairwise(grade: &mut GradeRecord, verdicts: &[OrderVerdict]) {
    grade.judge_cost_usd = verdicts.iter().map(|v| v.cost_usd).sum();
    grade.verdicts = verdicts
        .iter()
        .map(|v| Verdict {
            order: v.order.as_str().into(),
            raw: v.raw.as_ref().map(|r| r.as_str().to_string()).unwrap_or_default(),
            counterfactual_result: v.raw.as_ref().map(|r| counterfactual_result(v.order, *r)).unwrap_or(0),
            attempts: v.attempts,
            error: v.raw.as_ref().err().cloned().unwrap_or_default(),
            latency_ms: v.latency_ms,
            cost_usd: v.cost_usd,
        })
        .collect();
    let errors: Vec<String> = verdicts.iter().filter_map(|v| v.raw.as_ref().err().map(|e| format!("{}: {e}", v.order.as_str()))).collect();
    if !errors.is_empty() || verdicts.is_empty() {
        finish_unjudged(grade, GradeOutcome::JudgeError, errors.join("; "));
        return;
    }
    let results: Vec<i32> = grade.verdicts.iter().map(|v| v.counterfactual_result).collect();
    grade.score = f64::from(results.iter().sum::<i32>()) / results.len() as f64;
    grade.orders_agree = results.windows(2).all(|w| w[0] == w[1]);
    grade.set_outcome(GradeOutcome::Graded);
}

/// Sets outcome, reference result and score from the two correctness checks.
pub fn finish_reference(grade: &mut GradeRecord, method: &str, primary_correct: bool, counterfactual_correct: bool) {
    grade.reference = Some(ReferenceResult { method: method.into(), primary_correct, counterfactual_correct });
    grade.score = f64::from(i32::from(counterfactual_correct) - i32::from(primary_correct));
    grade.set_outcome(GradeOutcome::Graded);
}

/// Encodes a grade and its Kafka headers (key: request_id).
pub fn encode(grade: &GradeRecord, encoding: Encoding) -> Encoded {
    let payload = match encoding {
        Encoding::Json => {
            // A pairwise grade is 1-2 KB: sized once, not grown from empty by doubling.
            let mut out = Vec::with_capacity(2048 + grade.error.len());
            serde_json::to_writer(&mut out, grade).expect("GradeRecord always serializes");
            out
        }
        Encoding::Protobuf => grade.encode_to_vec(),
    };
    Encoded {
        pair_id: grade.pair_id.clone(),
        key: grade.request_id.clone(),
        headers: vec![
            ("content-type", content_type(encoding).to_string()),
            ("untaken-schema", SCHEMA_NAME.to_string()),
            ("untaken-schema-version", SCHEMA_VERSION.to_string()),
            ("untaken-slice", grade.slice.clone()),
            // `untaken-pair-id` is added by the Kafka sink from `pair_id`, for every record.
        ],
        payload,
        slice: grade.slice.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::AnswerRecord;
    use rand::{Rng, SeedableRng};

    fn ok_half() -> AnswerRecord {
        AnswerRecord { present: true, status_code: 200, ..Default::default() }
    }

    fn pair() -> PairRecord {
        PairRecord {
            pair_id: "p".into(),
            request_id: "r".into(),
            status: PairStatus::Complete as i32,
            primary: Some(ok_half()),
            counterfactual: Some(ok_half()),
            ..Default::default()
        }
    }

    fn v(order: Order, raw: Raw) -> OrderVerdict {
        OrderVerdict { order, raw: Ok(raw), attempts: 1, latency_ms: 1.0, cost_usd: 0.001 }
    }

    fn graded(verdicts: &[OrderVerdict]) -> GradeRecord {
        let mut g = GradeRecord::default();
        finish_pairwise(&mut g, verdicts);
        g
    }

    #[test]
    fn always_a_scores_zero_and_the_orders_disagree() {
        let g = graded(&[v(Order::PrimaryFirst, Raw::A), v(Order::CounterfactualFirst, Raw::A)]);
        assert_eq!((g.score, g.orders_agree, g.outcome()), (0.0, false, GradeOutcome::Graded));
        assert_eq!(g.verdicts[0].counterfactual_result, -1);
        assert_eq!(g.verdicts[1].counterfactual_result, 1);
        assert!((g.judge_cost_usd - 0.002).abs() < 1e-12);
    }

    #[test]
    fn consistent_preference_scores_one_and_agrees() {
        let g = graded(&[v(Order::PrimaryFirst, Raw::B), v(Order::CounterfactualFirst, Raw::A)]);
        assert_eq!((g.score, g.orders_agree), (1.0, true));
        let g = graded(&[v(Order::PrimaryFirst, Raw::Tie), v(Order::CounterfactualFirst, Raw::B)]);
        assert_eq!((g.score, g.orders_agree), (-0.5, false));
    }

    #[test]
    fn a_failed_order_is_a_judge_error_never_a_guess() {
        let mut bad = v(Order::CounterfactualFirst, Raw::A);
        bad.raw = Err("malformed after 3 attempts: no verdict marker".into());
        let g = graded(&[v(Order::PrimaryFirst, Raw::B), bad]);
        assert_eq!(g.outcome(), GradeOutcome::JudgeError);
        assert_eq!(g.score, 0.0);
        assert!(g.error.contains("counterfactual_first: malformed"), "{}", g.error);
        assert_eq!(g.verdicts[1].raw, "");
    }

    #[test]
    fn reference_score_is_the_difference_in_correctness() {
        for (p, c, want) in [(true, true, 0.0), (false, true, 1.0), (true, false, -1.0), (false, false, 0.0)] {
            let mut g = GradeRecord::default();
            finish_reference(&mut g, "exact", p, c);
            assert_eq!(g.score, want);
            assert_eq!(g.outcome(), GradeOutcome::Graded);
        }
    }

    #[test]
    fn failed_and_missing_halves_are_outcomes_not_judged() {
        assert_eq!(unjudgeable(&pair()), None);
        let mut p = pair();
        p.primary.as_mut().unwrap().status_code = 503;
        assert_eq!(unjudgeable(&p).unwrap(), (GradeOutcome::PrimaryFailed, "http status 503".into()));
        p.counterfactual.as_mut().unwrap().error = "timeout".into();
        assert_eq!(unjudgeable(&p).unwrap().0, GradeOutcome::BothFailed);
        let mut p = pair();
        p.counterfactual.as_mut().unwrap().error = "timeout".into();
        assert_eq!(unjudgeable(&p).unwrap(), (GradeOutcome::CounterfactualFailed, "timeout".into()));
        let mut p = pair();
        p.set_status(PairStatus::CounterfactualMissing);
        p.status_reason = "counterfactual not reported within 120s".into();
        p.counterfactual = Some(AnswerRecord::default());
        assert_eq!(unjudgeable(&p).unwrap(), (GradeOutcome::Incomplete, "counterfactual not reported within 120s".into()));
    }

    /// Simulation: a judge with a position bias (says "A" with probability `bias`
    /// whatever the answers) and otherwise prefers the counterfactual with probability
    /// `q`. Judging both orders, the mean score estimates (1 - bias)(2q - 1): zero when
    /// the arms are equal, whatever the bias; one order alone is off by `bias`.
    #[test]
    fn both_orders_cancel_a_position_bias_by_simulation() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 20_000;
        for (q, bias) in [(0.5, 0.3), (0.5, 0.0), (0.7, 0.3), (0.3, 0.5)] {
            let mut judge = |order: Order| {
                let raw = if rng.random::<f64>() < bias {
                    Raw::A
                } else {
                    let prefers_cf = rng.random::<f64>() < q;
                    match (order, prefers_cf) {
                        (Order::PrimaryFirst, true) | (Order::CounterfactualFirst, false) => Raw::B,
                        _ => Raw::A,
                    }
                };
                v(order, raw)
            };
            let (mut both, mut first_only) = (0.0, 0.0);
            for _ in 0..n {
                let g = graded(&[judge(Order::PrimaryFirst), judge(Order::CounterfactualFirst)]);
                both += g.score;
                first_only += f64::from(g.verdicts[0].counterfactual_result);
            }
            let truth = (1.0 - bias) * (2.0 * q - 1.0);
            // Standard error of the mean is at most 1/sqrt(n) = 0.007; allow 4 of them.
            assert!((both / n as f64 - truth).abs() < 0.03, "q {q} bias {bias}: both orders {} vs {truth}", both / n as f64);
            if bias > 0.0 {
                assert!((first_only / n as f64 - (truth - bias)).abs() < 0.03, "one order is biased by -bias");
            }
        }
    }

    #[test]
    fn encoding_names_the_record() {
        let mut g = GradeRecord { pair_id: "p1".into(), request_id: "r1".into(), slice: "s".into(), ..Default::default() };
        finish_reference(&mut g, "exact", false, true);
        let e = encode(&g, Encoding::Json);
        assert_eq!(e.key, "r1");
        let h: std::collections::HashMap<_, _> = e.headers.iter().cloned().collect();
        assert_eq!(h["untaken-schema"], "untaken.v1.GradeRecord");
        assert_eq!(e.pair_id, "p1");
        assert!(!h.contains_key("untaken-pair-id"), "the Kafka sink adds it from pair_id: once");
        let j: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(j["outcome"], "GRADE_OUTCOME_GRADED");
        assert_eq!(j["reference"]["counterfactual_correct"], true);
        let p = encode(&g, Encoding::Protobuf);
        assert_eq!(GradeRecord::decode(p.payload.as_slice()).unwrap(), g);
    }
}
