//! The demo's synthetic router: a latency-budget policy that sends a query to the
//! reasoning route only when its eligibility score clears a high threshold, calls
//! the chosen upstream over HTTP as a real router would, and calls `Mirror`
//! (one-phase for even queries, two-phase with `Complete` for odd ones).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::demo::world;
use crate::proto::v1::mirror_client::MirrorClient;
use crate::proto::v1::{Answer, CompleteRequest, MirrorRequest};

/// What the router did, per slice: requests, sent to reasoning, sampled by untaken.
#[derive(Debug, Default, Clone)]
pub struct Traffic {
    pub by_slice: BTreeMap<String, [usize; 3]>,
    pub control: usize,
    pub shed: HashMap<String, usize>,
    pub slowest_mirror: Duration,
}

impl Traffic {
    fn merge(&mut self, other: Traffic) {
        for (k, v) in other.by_slice {
            let e = self.by_slice.entry(k).or_default();
            for j in 0..3 {
                e[j] += v[j];
            }
        }
        self.control += other.control;
        for (k, v) in other.shed {
            *self.shed.entry(k).or_default() += v;
        }
        self.slowest_mirror = self.slowest_mirror.max(other.slowest_mirror);
    }

    pub fn total(&self) -> [usize; 3] {
        self.by_slice.values().fold([0; 3], |a, v| [a[0] + v[0], a[1] + v[1], a[2] + v[2]])
    }
}

/// The two upstreams, by route name.
pub struct Upstreams {
    pub fast: String,
    pub reasoning: String,
}

/// Sends queries `0..n` through `workers` concurrent router tasks.
pub async fn run(grpc: SocketAddr, upstreams: Upstreams, n: usize, workers: usize) -> anyhow::Result<Traffic> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?.connect().await?;
    let http = reqwest::Client::new();
    let upstreams = Arc::new(upstreams);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let client = MirrorClient::new(channel.clone());
        let (http, upstreams) = (http.clone(), upstreams.clone());
        tasks.spawn(async move {
            let mut traffic = Traffic::default();
            for i in (w..n).step_by(workers) {
                one(i, &mut MirrorClient::clone(&client), &http, &upstreams, &mut traffic).await?;
            }
            anyhow::Ok(traffic)
        });
    }
    let mut traffic = Traffic::default();
    while let Some(t) = tasks.join_next().await {
        traffic.merge(t??);
    }
    Ok(traffic)
}

async fn one(
    i: usize,
    client: &mut MirrorClient<tonic::transport::Channel>,
    http: &reqwest::Client,
    upstreams: &Upstreams,
    traffic: &mut Traffic,
) -> anyhow::Result<()> {
    let (slice, steps) = world::slice_of(i);
    let (question, truth) = world::question(i, slice, steps);
    let score = world::reasoning_score(i, slice);
    let (route, url, model) = if score > world::ROUTER_THRESHOLD {
        ("reasoning", &upstreams.reasoning, "reasoning-model")
    } else {
        ("fast", &upstreams.fast, "fast-model")
    };
    let body = world::request(&question, model);
    let call = || async {
        let started = Instant::now();
        let resp = http.post(url.as_str()).header("content-type", "application/json").body(body.clone()).send().await?;
        let status_code = u32::from(resp.status().as_u16());
        let bytes = resp.bytes().await?;
        anyhow::Ok(Answer { body: bytes.to_vec(), status_code, latency_ms: started.elapsed().as_secs_f64() * 1000.0, error: String::new() })
    };
    let one_phase = i % 2 == 0;
    let primary = if one_phase { Some(call().await?) } else { None };
    let labels = HashMap::from([
        ("tenant".to_string(), format!("tenant-{}", (crate::sampling::hash(b"demo-tenant", &i.to_string()) % 3) + 1)),
        ("router_version".to_string(), "latency-budget-v3".to_string()),
        ("expected_answer".to_string(), truth.to_string()),
        ("reasoning_score".to_string(), format!("{score:.3}")),
    ]);
    let request_id = format!("demo-{i:06}");
    let started = Instant::now();
    let resp = client
        .mirror(MirrorRequest {
            request_id: request_id.clone(),
            route_taken: route.into(),
            request_body: body.clone(),
            slice: slice.into(),
            labels,
            primary,
            ..Default::default()
        })
        .await?
        .into_inner();
    traffic.slowest_mirror = traffic.slowest_mirror.max(started.elapsed());
    let counts = traffic.by_slice.entry(slice.to_string()).or_default();
    counts[0] += 1;
    counts[1] += usize::from(route == "reasoning");
    if !resp.sampled {
        if resp.reason != "not_sampled" {
            *traffic.shed.entry(resp.reason).or_default() += 1;
        }
        if !one_phase {
            call().await?; // the user still gets an answer
        }
        return Ok(());
    }
    counts[2] += 1;
    traffic.control += usize::from(resp.control);
    if !one_phase {
        let answer = call().await?;
        client.complete(CompleteRequest { request_id, primary: Some(answer) }).await?;
    }
    Ok(())
}
