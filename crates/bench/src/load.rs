//! The load loop: N workers share one session and send the same operation back to back for a
//! fixed time; latencies, the request count and the CPU time of the watched processes are kept.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::{client::Session, procs::ProcCpu};

/// What one measured "request" is.
pub enum Op {
    /// `tools/call` of an echo tool; the reply must be `Echo: hello`.
    Call { tool: String },
    /// `tools/list`, following `nextCursor` to the end; the first walk must see `expect` tools.
    ListAll { expect: usize },
}

#[derive(Deserialize)]
struct Page {
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct CountedPage {
    tools: Vec<IgnoredAny>,
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

impl Op {
    /// Run once, decoding only what the loop needs; `verify` decodes and checks the reply.
    async fn once(&self, s: &Session, verify: bool) -> anyhow::Result<()> {
        match self {
            Op::Call { tool } => {
                let params = format!(r#"{{"name":"{tool}","arguments":{{"message":"hello"}}}}"#);
                if !verify {
                    s.request::<IgnoredAny>("tools/call", &params)
                        .await?
                        .into_result()?;
                    return Ok(());
                }
                let r: Value = s.request("tools/call", &params).await?.into_result()?;
                let text = r.pointer("/content/0/text").and_then(Value::as_str);
                if text != Some("Echo: hello") {
                    bail!("{tool}: expected the text \"Echo: hello\", got {r}");
                }
                Ok(())
            }
            Op::ListAll { expect } => {
                let mut cursor: Option<String> = None;
                let mut seen = 0;
                loop {
                    let params = match &cursor {
                        Some(c) => serde_json::json!({ "cursor": c }).to_string(),
                        None => "{}".to_owned(),
                    };
                    cursor = if verify {
                        let p: CountedPage =
                            s.request("tools/list", &params).await?.into_result()?;
                        seen += p.tools.len();
                        p.next_cursor
                    } else {
                        let p: Page = s.request("tools/list", &params).await?.into_result()?;
                        p.next_cursor
                    };
                    if cursor.is_none() {
                        break;
                    }
                }
                if verify && seen != *expect {
                    bail!("tools/list returned {seen} tools, expected {expect}");
                }
                Ok(())
            }
        }
    }
}

/// Processes whose CPU time is attributed to a run.
#[derive(Clone, Default)]
pub struct Watch {
    pub gateway: Option<u32>,
    pub upstreams: Vec<u32>,
}

/// The CPU times of the watched processes at one moment (`None`: a process was gone).
struct CpuSnapshot {
    gateway: Option<ProcCpu>,
    upstreams: Option<Vec<ProcCpu>>,
}

impl Watch {
    fn snapshot(&self) -> CpuSnapshot {
        CpuSnapshot {
            gateway: self.gateway.and_then(ProcCpu::read),
            upstreams: self.upstreams.iter().map(|p| ProcCpu::read(*p)).collect(),
        }
    }
}

impl CpuSnapshot {
    /// (gateway, upstreams) nanoseconds from `self` to `later`.
    fn until(&self, later: &CpuSnapshot, ticks_per_sec: u64) -> (Option<u64>, Option<u64>) {
        let gateway = match (&self.gateway, &later.gateway) {
            (Some(a), Some(b)) => Some(a.ns_until(b, ticks_per_sec)),
            _ => None,
        };
        let upstreams = match (&self.upstreams, &later.upstreams) {
            (Some(a), Some(b)) if !a.is_empty() && a.len() == b.len() => Some(
                a.iter()
                    .zip(b)
                    .map(|(a, b)| a.ns_until(b, ticks_per_sec))
                    .sum(),
            ),
            _ => None,
        };
        (gateway, upstreams)
    }
}

/// One measured run.
pub struct Sample {
    pub requests: u64,
    pub elapsed: Duration,
    /// Sorted, in nanoseconds.
    latencies: Vec<u64>,
    gateway_cpu_ns: Option<u64>,
    upstream_cpu_ns: Option<u64>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile in microseconds (nearest rank).
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i] as f64 / 1000.0
    }

    /// Gateway CPU time per request in microseconds.
    pub fn gateway_cpu_us(&self) -> Option<f64> {
        self.gateway_cpu_ns.map(|t| self.per_request_us(t))
    }

    pub fn upstream_cpu_us(&self) -> Option<f64> {
        self.upstream_cpu_ns.map(|t| self.per_request_us(t))
    }

    fn per_request_us(&self, ns: u64) -> f64 {
        ns as f64 / 1000.0 / self.requests.max(1) as f64
    }
}

pub struct RunSpec {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub ticks_per_sec: u64,
}

/// Verify one reply, warm up, then measure for `spec.duration`.
pub async fn measure(
    session: Arc<Session>,
    op: Arc<Op>,
    spec: &RunSpec,
    watch: &Watch,
) -> anyhow::Result<Sample> {
    op.once(&session, true)
        .await
        .context("the first reply failed the check")?;
    run_for(&session, &op, spec.concurrency, spec.warmup).await?;
    let before = watch.snapshot();
    let start = Instant::now();
    let mut latencies = run_for(&session, &op, spec.concurrency, spec.duration).await?;
    let elapsed = start.elapsed();
    let after = watch.snapshot();
    latencies.sort_unstable();
    let (gateway_cpu_ns, upstream_cpu_ns) = before.until(&after, spec.ticks_per_sec);
    Ok(Sample {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        gateway_cpu_ns,
        upstream_cpu_ns,
    })
}

/// `concurrency` workers, each sending the next request as soon as its last reply is read.
async fn run_for(
    session: &Arc<Session>,
    op: &Arc<Op>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (session, op) = (session.clone(), op.clone());
        workers.spawn(async move {
            let mut lat = Vec::with_capacity(64 * 1024);
            while Instant::now() < deadline {
                let t = Instant::now();
                op.once(&session, false).await?;
                lat.push(t.elapsed().as_nanos() as u64);
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = workers.join_next().await {
        all.extend(r.context("a load worker panicked")??);
    }
    Ok(all)
}
