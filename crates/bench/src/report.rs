//! The Markdown report: one row per run with its ratio to the matching direct run, the memory
//! figures, and each target with its measured value marked met or missed.

use std::fmt::Write;

use crate::load::Sample;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Gateway,
}

/// Which targets a row is checked against.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A proxied `tools/call`: CPU, added latency and throughput ratio targets.
    Call,
    /// `tools/list` of a one-tool server: no target, shown for comparison.
    List,
    /// `tools/list` of the big catalog: the p50 target.
    Catalog,
}

pub struct Row {
    pub scenario: String,
    pub kind: Kind,
    pub path: Path,
    pub concurrency: usize,
    pub outcome: Result<Sample, String>,
}

#[derive(Default)]
pub struct Memory {
    pub idle_kib: Option<u64>,
    pub sessions: usize,
    pub after_kib: Option<u64>,
    pub registered: Option<u64>,
    pub error: Option<String>,
}

pub struct Report {
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    /// `None` when the memory group was not run.
    pub memory: Option<Memory>,
    /// RSS (KiB) of the proxy group's gateway after all its runs, and the requests measured
    /// (`None`: not run).
    pub after_load: Option<(u64, u64)>,
}

const CPU_TARGET_US: f64 = 40.0;
const ADDED_P50_TARGET_US: f64 = 100.0;
/// Against a direct HTTP call (over stdio the direct run is a bare pipe, with no HTTP at all, so
/// its ratio is reported without a target).
const THROUGHPUT_TARGET: f64 = 0.90;
const CATALOG_P50_TARGET_US: f64 = 5000.0;
const IDLE_RSS_TARGET_KIB: u64 = 30 * 1024;
const SESSION_TARGET_KIB: f64 = 50.0;

impl Report {
    fn direct_of(&self, row: &Row) -> Option<&Sample> {
        self.rows
            .iter()
            .find(|r| {
                r.path == Path::Direct
                    && r.scenario == row.scenario
                    && r.concurrency == row.concurrency
            })
            .and_then(|r| r.outcome.as_ref().ok())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "## Manifold benchmark\n");
        for line in &self.header {
            let _ = writeln!(w, "{line}");
        }
        let _ = writeln!(w, "\n### Requests\n");
        let _ = writeln!(
            w,
            "| scenario | path | conc | req/s | p50 µs | p99 µs | gateway CPU µs/req | upstream CPU µs/req | gateway vs direct |"
        );
        let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---|");
        for row in &self.rows {
            let path = match row.path {
                Path::Direct => "direct",
                Path::Gateway => "gateway",
            };
            let s = match &row.outcome {
                Ok(s) => s,
                Err(e) => {
                    let _ = writeln!(
                        w,
                        "| {} | {path} | {} | failed: {} | | | | | |",
                        row.scenario,
                        row.concurrency,
                        e.replace('|', "/").replace('\n', " ")
                    );
                    continue;
                }
            };
            let vs = match (row.path, self.direct_of(row)) {
                (Path::Gateway, Some(d)) => format!(
                    "{:.0}% of req/s, p50 {:+.0} µs",
                    100.0 * s.rate() / d.rate(),
                    s.quantile_us(0.5) - d.quantile_us(0.5)
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                w,
                "| {} | {path} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {vs} |",
                row.scenario,
                row.concurrency,
                s.rate(),
                s.quantile_us(0.5),
                s.quantile_us(0.99),
                opt(s.gateway_cpu_us()),
                opt(s.upstream_cpu_us()),
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(w, "\n### Gateway memory\n");
            let _ = writeln!(w, "| measurement | value |\n|---|---:|");
            let _ = writeln!(
                w,
                "| idle RSS (1 stdio connector, no client session) | {} |",
                kib(m.idle_kib)
            );
            let _ = writeln!(
                w,
                "| RSS after {} idle sessions ({} registered by the gateway) | {} |",
                m.sessions,
                m.registered
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                kib(m.after_kib)
            );
            let _ = writeln!(
                w,
                "| per idle session | {} |",
                self.per_session(m)
                    .map(|k| format!("{k:.1} KiB"))
                    .unwrap_or_else(|| "n/a".into())
            );
            if let Some(e) = &m.error {
                let _ = writeln!(w, "\nmemory scenario failed: {e}");
            }
        }
        if let Some((k, served)) = self.after_load {
            let _ = writeln!(
                w,
                "\nGateway RSS after the proxy runs ({served} measured requests, plus warm-ups): {}",
                kib(Some(k))
            );
        }
        let _ = writeln!(w, "\n### Targets\n");
        let _ = writeln!(w, "| target | measured | result |\n|---|---:|---|");
        for (target, measured, met) in self.targets() {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "n/a (run failed)",
            };
            let _ = writeln!(w, "| {target} | {measured} | {verdict} |");
        }
        if let Some(note) = self.stall_note() {
            let _ = writeln!(w, "\n{note}");
        }
        out
    }

    fn per_session(&self, m: &Memory) -> Option<f64> {
        let (idle, after) = (m.idle_kib?, m.after_kib?);
        (m.sessions > 0).then(|| after.saturating_sub(idle) as f64 / m.sessions as f64)
    }

    /// A hint when single-request latency through the gateway sits at Linux's delayed-ACK timer
    /// (40 ms): the reply went out in several segments on a socket with Nagle's algorithm on.
    fn stall_note(&self) -> Option<String> {
        let stalled: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r.path == Path::Gateway && r.concurrency == 1 && r.kind != Kind::Catalog)
            .filter_map(|r| r.outcome.as_ref().ok())
            .map(|s| s.quantile_us(0.5))
            .filter(|p50| (38_000.0..=48_000.0).contains(p50))
            .collect();
        let first = stalled.first()?;
        Some(format!(
            "Note: {} gateway run(s) at concurrency 1 have p50 ≈ {:.1} ms, the Linux delayed-ACK timeout (40 ms). That is the signature of a reply written in more than one segment on a connection without TCP_NODELAY: the second write waits for the client's delayed ACK.",
            stalled.len(),
            first / 1000.0
        ))
    }

    /// (target, measured value, met?) for every target that applies to a run.
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut t = Vec::new();
        let gateway_rows = self.rows.iter().filter(|r| r.path == Path::Gateway);
        for row in gateway_rows {
            let s = row.outcome.as_ref().ok();
            let name = format!("{}, c={}", row.scenario, row.concurrency);
            match row.kind {
                Kind::Call => {
                    let cpu = s.and_then(Sample::gateway_cpu_us);
                    t.push((
                        format!("gateway CPU ≤ {CPU_TARGET_US:.0} µs per proxied call ({name})"),
                        opt_unit(cpu, "µs"),
                        cpu.map(|c| c <= CPU_TARGET_US),
                    ));
                    let direct = self.direct_of(row);
                    if row.concurrency == 1 {
                        let added = s
                            .zip(direct)
                            .map(|(s, d)| s.quantile_us(0.5) - d.quantile_us(0.5));
                        t.push((
                            format!("added p50 ≤ {ADDED_P50_TARGET_US:.0} µs ({name})"),
                            opt_unit(added, "µs"),
                            added.map(|a| a <= ADDED_P50_TARGET_US),
                        ));
                    } else if row.scenario.contains("HTTP upstream") {
                        let ratio = s.zip(direct).map(|(s, d)| s.rate() / d.rate());
                        t.push((
                            format!(
                                "throughput ≥ {:.0}% of direct ({name})",
                                THROUGHPUT_TARGET * 100.0
                            ),
                            ratio
                                .map(|r| format!("{:.0}%", r * 100.0))
                                .unwrap_or_else(|| "n/a".into()),
                            ratio.map(|r| r >= THROUGHPUT_TARGET),
                        ));
                    }
                }
                Kind::Catalog if row.concurrency == 1 => {
                    let p50 = s.map(|s| s.quantile_us(0.5));
                    t.push((
                        format!(
                            "tools/list p50 ≤ {:.0} ms ({name})",
                            CATALOG_P50_TARGET_US / 1000.0
                        ),
                        p50.map(|p| format!("{:.2} ms", p / 1000.0))
                            .unwrap_or_else(|| "n/a".into()),
                        p50.map(|p| p <= CATALOG_P50_TARGET_US),
                    ));
                }
                Kind::Catalog | Kind::List => {}
            }
        }
        // A 1,000-rule policy against none: the same call, the same concurrency.
        for row in self.rows.iter().filter(|r| r.path == Path::Gateway) {
            let Some(base) = row.scenario.strip_suffix(", 1,000 role rules") else {
                continue;
            };
            let without = self.rows.iter().find(|r| {
                r.path == Path::Gateway && r.scenario == base && r.concurrency == row.concurrency
            });
            let ratio = row
                .outcome
                .as_ref()
                .ok()
                .zip(without.and_then(|w| w.outcome.as_ref().ok()))
                .map(|(s, w)| s.rate() / w.rate());
            t.push((
                format!(
                    "throughput with 1,000 role rules ≥ {:.0}% of without ({base}, c={})",
                    THROUGHPUT_TARGET * 100.0,
                    row.concurrency
                ),
                ratio
                    .map(|r| format!("{:.0}%", r * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                ratio.map(|r| r >= THROUGHPUT_TARGET),
            ));
        }
        if let Some(m) = &self.memory {
            let idle = m.idle_kib;
            t.push((
                format!("idle RSS ≤ {} MiB", IDLE_RSS_TARGET_KIB / 1024),
                kib(idle),
                idle.map(|k| k <= IDLE_RSS_TARGET_KIB),
            ));
            let per = self.per_session(m);
            t.push((
                format!("≤ {SESSION_TARGET_KIB:.0} KiB per idle session"),
                per.map(|k| format!("{k:.1} KiB"))
                    .unwrap_or_else(|| "n/a".into()),
                per.map(|k| k <= SESSION_TARGET_KIB),
            ));
        }
        t
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into())
}

fn opt_unit(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.1} {unit}"))
        .unwrap_or_else(|| "n/a".into())
}

fn kib(v: Option<u64>) -> String {
    match v {
        Some(k) => format!("{:.1} MiB ({k} KiB)", k as f64 / 1024.0),
        None => "n/a".into(),
    }
}
