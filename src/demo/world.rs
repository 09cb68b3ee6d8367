//! The demo's simulated world: questions with known answers, two models whose
//! accuracy depends on how many steps a question takes, and a latency-budget
//! router that sends almost everything to the fast model.
//!
//! Pure and deterministic: every draw is a hash of what a real system would see
//! (the request bytes, the model), so a run can be repeated exactly. What the
//! demo prints is never read from here: it comes from the grades the judge writes.

use serde_json::Value;

use crate::sampling::hash;

/// Traffic mix: slice, share in per mille, steps a question of that slice takes.
/// `multi_step` is the 5% nobody looks at.
pub const SLICES: [(&str, u32, usize); 4] =
    [("simple_qa", 700, 1), ("ambiguous", 150, 1), ("out_of_distribution", 100, 2), ("multi_step", 50, 4)];

/// How often a model answers a question of `steps` steps correctly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Accuracy on one- and two-step questions.
    pub easy: f64,
    /// Accuracy on questions of four steps or more.
    pub hard: f64,
    /// Base latency in milliseconds, plus `per_step_ms` for each step.
    pub base_ms: u64,
    pub per_step_ms: u64,
    /// Shows its working: longer answers, more output tokens.
    pub verbose: bool,
}

/// The fast model: as good as the other on easy questions, 15 points worse on hard ones.
pub const FAST: Profile = Profile { easy: 0.90, hard: 0.70, base_ms: 2, per_step_ms: 0, verbose: false };
/// The reasoning model: slower, dearer, better on multi-step questions.
pub const REASONING: Profile = Profile { easy: 0.90, hard: 0.85, base_ms: 40, per_step_ms: 10, verbose: true };

/// A uniform draw in [0, 1) from a hash.
fn unit(salt: &[u8], key: &str) -> f64 {
    (hash(salt, key) >> 11) as f64 / (1u64 << 53) as f64
}

/// The slice of query `i`, drawn by the traffic mix.
pub fn slice_of(i: usize) -> (&'static str, usize) {
    let mut x = (hash(b"demo-slice", &i.to_string()) % 1000) as u32;
    for (name, share, steps) in SLICES {
        if x < share {
            return (name, steps);
        }
        x -= share;
    }
    (SLICES[0].0, SLICES[0].2)
}

/// Query `i`: the question text and its known answer.
pub fn question(i: usize, slice: &str, steps: usize) -> (String, i64) {
    let n = |k: usize| (hash(b"demo-n", &format!("{i}/{k}")) % 20 + 2) as i64;
    let mut value = n(0);
    let mut text = format!("Start with {value}");
    for k in 1..=steps {
        let x = n(k);
        match k % 3 {
            1 => {
                value += x;
                text.push_str(&format!(", add {x}"));
            }
            2 => {
                value *= x;
                text.push_str(&format!(", multiply by {x}"));
            }
            _ => {
                value -= x;
                text.push_str(&format!(", subtract {x}"));
            }
        }
    }
    let lead = match slice {
        "ambiguous" => "Not sure how to phrase this, but: ",
        "out_of_distribution" => "Answer as a 17th-century ledger clerk would: ",
        "multi_step" => "Work it out step by step. ",
        _ => "",
    };
    (format!("{lead}{text}. What is the result? (query {i})"), value)
}

/// The operations in a question, parsed back from its text: (start, [(op, x)]).
fn parse(question: &str) -> Option<(i64, Vec<(char, i64)>)> {
    let rest = &question[question.find("Start with ")? + "Start with ".len()..];
    let rest = &rest[..rest.find('.')?];
    let mut parts = rest.split(", ");
    let start = parts.next()?.trim().parse().ok()?;
    let mut ops = Vec::new();
    for p in parts {
        let (op, num) = if let Some(x) = p.strip_prefix("add ") {
            ('+', x)
        } else if let Some(x) = p.strip_prefix("multiply by ") {
            ('*', x)
        } else {
            ('-', p.strip_prefix("subtract ")?)
        };
        ops.push((op, num.trim().parse().ok()?));
    }
    Some((start, ops))
}

/// A chat-completions request for `question`, with a system prompt like a real one.
pub fn request(question: &str, model: &str) -> Vec<u8> {
    let system = "You are a careful assistant for an online retailer's operations team. Answer concisely and \
                  give the final number on its own at the end. "
        .repeat(4);
    crate::simulate::chat_body(&system, question, model)
}

/// What a model with `profile` answers to a chat request, and how long it takes.
/// The draw is a hash of the request bytes and the model, so the router's call and
/// the sidecar's (which changes `model` and `stream`) are independent draws, and a
/// control pair's second ask of the same model can disagree with the first.
pub fn answer(profile: &Profile, model: &str, request: &[u8], parsed: &Value) -> (String, u64) {
    let question = parsed["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
        .and_then(|x| x["content"].as_str())
        .unwrap_or_default();
    let Some((start, ops)) = parse(question) else {
        return ("I could not find a question to answer.".into(), profile.base_ms);
    };
    let steps = ops.len();
    let truth = ops.iter().fold(start, |v, &(op, x)| match op {
        '+' => v + x,
        '*' => v * x,
        _ => v - x,
    });
    let accuracy = if steps >= 4 { profile.hard } else { profile.easy };
    let key = format!("{model}/{}", String::from_utf8_lossy(request));
    let correct = unit(b"demo-correct", &key) < accuracy;
    let result = if correct { truth } else { truth + 1 + (hash(b"demo-wrong", &key) % 9) as i64 };
    let content = if profile.verbose {
        let mut s = String::from("Let me work through it. ");
        for (k, (op, x)) in ops.iter().enumerate() {
            s.push_str(&format!("Step {}: apply {op}{x}. ", k + 1));
        }
        format!("{s}The result is {result}.")
    } else {
        format!("The result is {result}.")
    };
    (content, profile.base_ms + profile.per_step_ms * steps as u64)
}

/// The router's eligibility score for the reasoning route: a classifier that sees
/// surface features, so it is only loosely related to how hard a question is.
pub fn reasoning_score(i: usize, slice: &str) -> f64 {
    let noise = unit(b"demo-score", &i.to_string());
    match slice {
        "out_of_distribution" => 0.55 + 0.4 * noise,
        "multi_step" => 0.35 + 0.4 * noise,
        _ => 0.5 * noise,
    }
}

/// The latency-budget router: the reasoning route only above this score.
pub const ROUTER_THRESHOLD: f64 = 0.8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_parse_back_to_their_known_answer() {
        for i in 0..200 {
            let (slice, steps) = slice_of(i);
            let (q, truth) = question(i, slice, steps);
            let (start, ops) = parse(&q).unwrap_or_else(|| panic!("{q}"));
            assert_eq!(ops.len(), steps);
            let v = ops.iter().fold(start, |v, &(op, x)| match op {
                '+' => v + x,
                '*' => v * x,
                _ => v - x,
            });
            assert_eq!(v, truth, "{q}");
        }
    }

    #[test]
    fn accuracy_follows_the_profile() {
        let mut right = [[0usize; 2]; 2];
        let n = 4000;
        for i in 0..n {
            let hard = i % 2 == 0;
            let (q, truth) = question(i, "x", if hard { 4 } else { 1 });
            for (m, (p, model)) in [(FAST, "fast-model"), (REASONING, "reasoning-model")].iter().enumerate() {
                let body = request(&q, model);
                let parsed: Value = serde_json::from_slice(&body).unwrap();
                let (content, _) = answer(p, model, &body, &parsed);
                if content.ends_with(&format!(" {truth}.")) {
                    right[m][usize::from(hard)] += 1;
                }
            }
        }
        let rate = |c: usize| c as f64 / (n / 2) as f64;
        // Binomial(2000, p): sd ≤ 0.012; 4 sd.
        for (m, p) in [FAST, REASONING].iter().enumerate() {
            assert!((rate(right[m][0]) - p.easy).abs() < 0.045, "{m} easy {}", rate(right[m][0]));
            assert!((rate(right[m][1]) - p.hard).abs() < 0.045, "{m} hard {}", rate(right[m][1]));
        }
    }

    #[test]
    fn traffic_mix_and_router_send_the_hard_slice_fast() {
        let n = 20_000;
        let mut multi = 0;
        let mut multi_to_reasoning = 0;
        for i in 0..n {
            let (slice, _) = slice_of(i);
            if slice == "multi_step" {
                multi += 1;
                multi_to_reasoning += usize::from(reasoning_score(i, slice) > ROUTER_THRESHOLD);
            }
        }
        assert!((multi as f64 / n as f64 - 0.05).abs() < 0.006, "{multi}");
        assert_eq!(multi_to_reasoning, 0, "the router never sends multi_step to the reasoning route");
    }
}
