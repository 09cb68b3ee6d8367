//! Grades one pair: the judge named by config, wired to its limits and metrics.
//! Used alike by the Kafka worker and the file mode.
//!
//! A pair with a missing or failed half never reaches a judge (it becomes a grade
//! with that outcome). A pairwise judge sees both orders, concurrently, and never
//! grades a pair in which its own model is an arm unless config allows it.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::budget::JudgeLimits;
use super::client::JudgeClient;
use super::config::{JudgeConfig, JudgeKind, ReferenceConfig};
use super::features::{half_summary, half_text, request_features};
use super::grade::{self, Order, OrderVerdict, Origin, Summary};
use super::metrics::JudgeMetrics;
use super::pair::Pair;
use super::prompt::{conversation, Prompt};
use super::reference;
use crate::config::ConfigError;
use crate::secrets::LiveToken;
use crate::proto::v1::{GradeOutcome, GradeRecord, JudgeInfo};

// One per worker: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Method {
    Pairwise { client: JudgeClient, prompt: Prompt, model: String, allow_self_judging: bool, api_key: Option<LiveToken> },
    Reference(ReferenceConfig),
}

pub struct Grader {
    method: Method,
    info: JudgeInfo,
    limits: Arc<JudgeLimits>,
    metrics: Arc<JudgeMetrics>,
}

impl Grader {
    pub fn new(config: &JudgeConfig, metrics: Arc<JudgeMetrics>) -> Result<Self, ConfigError> {
        let (method, info) = match config.judge.kind {
            JudgeKind::Pairwise => {
                let p = config.judge.pairwise.as_ref().ok_or_else(|| ConfigError::new("judge.pairwise", "missing"))?;
                let prompt = Prompt::new(&p.rubric, p.structured_output, p.max_answer_chars);
                let info = JudgeInfo { kind: "pairwise".into(), model: p.model.clone(), prompt_version: prompt.version().into() };
                let api_key: Option<LiveToken> = p.api_key()?.map(|k| Arc::new(ArcSwap::from_pointee(k)));
                let client = JudgeClient::new(p, api_key.clone(), &metrics);
                let method = Method::Pairwise { client, prompt, model: p.model.clone(), allow_self_judging: p.allow_self_judging, api_key };
                (method, info)
            }
            JudgeKind::Reference => {
                let r = config.judge.reference.clone().ok_or_else(|| ConfigError::new("judge.reference", "missing"))?;
                let info = JudgeInfo { kind: "reference".into(), model: r.method.as_str().into(), prompt_version: String::new() };
                (Method::Reference(r), info)
            }
        };
        Ok(Self { method, info, limits: Arc::new(JudgeLimits::new(&config.limits)), metrics })
    }

    pub fn limits(&self) -> &JudgeLimits {
        &self.limits
    }

    /// True while the judge endpoint is down (its circuit is open): pause consumption.
    pub fn judge_down(&self) -> bool {
        match &self.method {
            Method::Pairwise { client, .. } => client.endpoint_down(),
            Method::Reference(_) => false,
        }
    }

    /// The judge endpoint's API key in force, if one is configured: storing a new one
    /// here makes the next judge call carry it.
    pub fn api_key(&self) -> Option<LiveToken> {
        match &self.method {
            Method::Pairwise { api_key, .. } => api_key.clone(),
            Method::Reference(_) => None,
        }
    }

    pub fn metrics(&self) -> &Arc<JudgeMetrics> {
        &self.metrics
    }

    /// Grades one pair (network for a pairwise judge; waits for admission). The pair
    /// is taken by value: a pairwise grading keeps only the grade and the two judge
    /// request bodies while it waits for the judge, not the decoded record.
    pub async fn grade(&self, pair: Pair, origin: &Origin) -> GradeRecord {
        let Pair { record: pair, request, primary_body, counterfactual_body } = pair;
        let primary_text = half_text(pair.primary.as_ref(), primary_body);
        let cf_text = half_text(pair.counterfactual.as_ref(), counterfactual_body);
        let summary = Summary {
            features: request_features(&request, pair.primary.as_ref().map_or(0, |p| p.input_tokens)),
            primary: half_summary(pair.primary.as_ref(), &primary_text),
            counterfactual: half_summary(pair.counterfactual.as_ref(), &cf_text),
        };
        let mut g = grade::base(&pair, summary, self.info.clone(), origin, SystemTime::now());
        if let Some((outcome, why)) = grade::unjudgeable(&pair) {
            grade::finish_unjudged(&mut g, outcome, why);
            return g;
        }
        match &self.method {
            Method::Reference(cfg) => match reference::known_answer(&pair, &request, cfg) {
                None => grade::finish_unjudged(&mut g, GradeOutcome::NoReference, "the pair carries no known answer".into()),
                Some(known) => {
                    let check = |text: &str| reference::is_correct(text, &known, cfg.method, cfg.tolerance);
                    match (check(&primary_text), check(&cf_text)) {
                        (Ok(p), Ok(c)) => grade::finish_reference(&mut g, cfg.method.as_str(), p, c),
                        (Err(e), _) | (_, Err(e)) => grade::finish_unjudged(&mut g, GradeOutcome::JudgeError, e),
                    }
                }
            },
            Method::Pairwise { client, prompt, model, allow_self_judging, .. } => {
                let arm_models = [pair.route_taken.as_ref(), pair.route_not_taken.as_ref()].map(|r| r.map(|r| r.model.as_str()));
                if !allow_self_judging && arm_models.contains(&Some(model.as_str())) {
                    let why = format!("the judge model `{model}` is an arm of this pair (set judge.pairwise.allow_self_judging to allow)");
                    grade::finish_unjudged(&mut g, GradeOutcome::JudgeError, why);
                    return g;
                }
                // Both request bodies are rendered now; the record, its JSON, the answer
                // texts and the prompts are freed before waiting for the judge.
                let conv = conversation(&request);
                let body = |order: Order| {
                    let messages = match order {
                        Order::PrimaryFirst => prompt.messages(&conv, &primary_text, &cf_text),
                        Order::CounterfactualFirst => prompt.messages(&conv, &cf_text, &primary_text),
                    };
                    client.request_body(&messages)
                };
                let bodies = [body(Order::PrimaryFirst), body(Order::CounterfactualFirst)];
                drop((pair, request, primary_text, cf_text, conv));
                let ask = |order: Order, body: Bytes| async move {
                    let v = client.verdict(&body, &self.limits, &self.metrics).await;
                    OrderVerdict { order, raw: v.raw, attempts: v.attempts, latency_ms: v.latency_ms, cost_usd: v.cost_usd }
                };
                let [first, second] = bodies;
                let (first, second) = futures::join!(ask(Order::PrimaryFirst, first), ask(Order::CounterfactualFirst, second));
                grade::finish_pairwise(&mut g, &[first, second]);
            }
        }
        g
    }
}
