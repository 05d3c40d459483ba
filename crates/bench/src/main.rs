//! `manifold-bench`: starts `fast-upstream` servers and the `manifold` gateway on loopback with
//! generated configs, drives each scenario directly and through the gateway at several
//! concurrencies, and prints a Markdown report with the targets marked met or missed.

mod client;
mod load;
mod procs;
mod report;

use std::{
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;
use tokio::task::JoinSet;

use client::{HttpSession, Session, StdioSession};
use load::{Op, RunSpec, Watch};
use procs::{Proc, TempDir};
use report::{Kind, Memory, Path, Report, Row};

#[derive(Parser)]
#[command(
    name = "manifold-bench",
    about = "Measure the manifold gateway against direct access to a fast MCP upstream"
)]
struct Cli {
    /// The gateway binary [default: `manifold` next to this binary].
    #[arg(long)]
    manifold: Option<PathBuf>,
    /// The upstream binary [default: `fast-upstream` next to this binary].
    #[arg(long)]
    fast_upstream: Option<PathBuf>,
    /// Measured time per run, e.g. 5s or 500ms [default: 5s, 1s with --quick].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Warm-up before each run [default: a fifth of --duration, at most 1s].
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Concurrency levels (workers sharing one session).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 32])]
    concurrency: Vec<usize>,
    /// Idle sessions opened for the per-session memory figure [default: 1000, 200 with --quick].
    #[arg(long)]
    sessions: Option<usize>,
    /// Connectors in the big catalog.
    #[arg(long, default_value_t = 50)]
    catalog_connectors: usize,
    /// Tools per connector in the big catalog.
    #[arg(long, default_value_t = 100)]
    catalog_tools: usize,
    /// `gateway.page_size` for the big catalog; a measured list walks every page.
    #[arg(long, default_value_t = 5000)]
    page_size: usize,
    /// 1s runs and fewer sessions: the whole benchmark in well under a minute.
    #[arg(long)]
    quick: bool,
    /// Pin the gateway to this CPU (with `taskset`, so its runtime gets one worker, as the
    /// targets are stated) [default: the last CPU; "none" to leave it unpinned].
    #[arg(long, default_value = "last")]
    gateway_cpu: String,
    /// Run only these groups (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Group>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    /// Idle RSS and RSS per idle session.
    Memory,
    /// tools/call and tools/list through an HTTP and a stdio upstream.
    Proxy,
    /// tools/list of the big catalog.
    Catalog,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One thread: the load generator competes with the gateway and the upstream for the CPUs,
    // so it is kept as cheap and as predictable as possible.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Returning drops every process guard, so Ctrl-C still stops what we started.
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Everything a scenario needs: binaries, scratch space, the HTTP client and run settings.
struct Bench {
    manifold: PathBuf,
    /// The CPU the gateway is pinned to, if any.
    gateway_cpu: Option<usize>,
    upstream: PathBuf,
    tmp: TempDir,
    client: reqwest::Client,
    spec: RunSpec,
    concurrency: Vec<usize>,
    rows: Vec<Row>,
    /// RSS (KiB) of the proxy group's gateway after all its runs, and the requests measured.
    after_load: Option<(u64, u64)>,
}

/// How a run reaches its server.
enum Target {
    /// Streamable HTTP at `url`; `watch` names the processes whose CPU counts.
    Http { url: String, watch: Watch },
    /// The same, as a 2026-07-28 client (stateless requests).
    HttpModern { url: String, watch: Watch },
    /// Streamable HTTP with `Authorization: Bearer <bearer>` on every request.
    HttpAs {
        url: String,
        watch: Watch,
        bearer: String,
    },
    /// A `fast-upstream stdio` child of the benchmark itself, one per run.
    StdioDirect,
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    let duration = cli.duration.unwrap_or(if cli.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    let warmup = cli
        .warmup
        .unwrap_or((duration / 5).min(Duration::from_secs(1)));
    let sessions = cli.sessions.unwrap_or(if cli.quick { 200 } else { 1000 });
    let manifold = match cli.manifold {
        Some(p) => p,
        None => procs::sibling("manifold")?,
    };
    let upstream = match cli.fast_upstream {
        Some(p) => p,
        None => procs::sibling("fast-upstream")?,
    };
    procs::ensure_exists(&manifold, "the gateway binary (--manifold)")?;
    procs::ensure_exists(&upstream, "fast-upstream (--fast-upstream)")?;
    let manifold = manifold.canonicalize()?;
    let upstream = upstream.canonicalize()?;
    let ticks = procs::clock_ticks();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gateway_cpu = match cli.gateway_cpu.as_str() {
        "none" => None,
        "last" if cpus > 1 && Command::new("taskset").arg("-V").output().is_ok() => Some(cpus - 1),
        "last" => {
            eprintln!("note: the gateway runs unpinned (one CPU, or no taskset)");
            None
        }
        n => Some(n.parse::<usize>().with_context(|| {
            format!("--gateway-cpu {n:?} is not a CPU number, \"last\" or \"none\"")
        })?),
    };
    let mut b = Bench {
        manifold,
        gateway_cpu,
        upstream,
        tmp: TempDir::new()?,
        client: client::http_client()?,
        spec: RunSpec {
            concurrency: 1,
            warmup,
            duration,
            ticks_per_sec: ticks,
        },
        concurrency: cli.concurrency.clone(),
        rows: Vec::new(),
        after_load: None,
    };
    let started = Instant::now();
    let wanted = |g: Group| cli.only.is_empty() || cli.only.contains(&g);
    let memory = if wanted(Group::Memory) {
        Some(b.memory(sessions).await.unwrap_or_else(|e| Memory {
            error: Some(format!("{e:#}")),
            ..Memory::default()
        }))
    } else {
        None
    };
    if wanted(Group::Proxy) {
        b.proxied().await?;
    }
    let total = cli.catalog_connectors * cli.catalog_tools;
    if wanted(Group::Catalog) {
        b.catalog(cli.catalog_connectors, cli.catalog_tools, cli.page_size)
            .await?;
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let pages = total.div_ceil(cli.page_size.max(1));
    let pinned = match b.gateway_cpu {
        Some(c) => format!("the gateway pinned to CPU {c} (one runtime worker)"),
        None => "the gateway unpinned".to_owned(),
    };
    let header = vec![
        format!(
            "Gateway `{}`, upstream `{}`; {cpus} CPUs shared by the load generator, the gateway and the upstreams, {pinned}; finished in {:.0} s.",
            b.manifold.display(),
            b.upstream.display(),
            started.elapsed().as_secs_f64()
        ),
        format!(
            "Each run: a new MCP session (initialize + initialized), one verified reply, {warmup:?} warm-up, then {duration:?} measured. `conc` workers share the session over keep-alive HTTP/1.1 connections (reqwest, one thread) and each sends its next request as soon as its reply is read."
        ),
        "Direct HTTP = the same requests to `fast-upstream http` (axum, 1 thread); direct stdio = the benchmark talking to its own `fast-upstream stdio` child over pipes. Both reply with JSON bodies.".to_owned(),
        "CPU = time on CPU of every thread of the process over the measured window (/proc/PID/task/*/schedstat, ns; /proc/PID/stat utime+stime if a thread exited) ÷ requests. *Gateway CPU* is the gateway process alone; the stdio upstreams it spawns are excluded from it and counted under *upstream CPU*, as is the HTTP upstream.".to_owned(),
        format!(
            "Big catalog: {} connectors × {} tools (`fast-upstream stdio --tools {}`, `echo` excluded by curation) = {total} tools in one virtual server, gateway.page_size = {} ({pages} page(s) per list, each list walks all pages); direct = one `fast-upstream http --tools {}`.",
            cli.catalog_connectors,
            cli.catalog_tools,
            cli.catalog_tools,
            cli.page_size,
            total.saturating_sub(1)
        ),
    ];
    let report = Report {
        header,
        rows: std::mem::take(&mut b.rows),
        memory,
        after_load: b.after_load,
    };
    Ok(report.render())
}

/// A running gateway and its base URL (`http://127.0.0.1:PORT`).
struct Gateway {
    proc: Proc,
    base: String,
}

impl Gateway {
    fn url(&self, server: &str) -> String {
        format!("{}/mcp/{server}", self.base)
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Wait until every connector is up and each `(server, tools)` lists that many tools.
    async fn wait_ready(
        &self,
        client: &reqwest::Client,
        expect: &[(&str, usize)],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/healthz/detail", self.base);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(r) = client.get(&url).send().await
                && let Ok(v) = r.json::<Value>().await
            {
                let up = v["connectors"]
                    .as_object()
                    .is_some_and(|m| m.values().all(|c| c["state"] == "up"));
                let listed = expect
                    .iter()
                    .all(|(s, n)| v["servers"][s]["tools"].as_u64() == Some(*n as u64));
                if up && listed {
                    return Ok(());
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the gateway was not ready within {timeout:?}; last /healthz/detail: {}{}",
            short(&last.to_string()),
            self.proc.log_tail()
        )
    }

    async fn sessions_of(&self, client: &reqwest::Client, server: &str) -> Option<u64> {
        let url = format!("{}/healthz/detail", self.base);
        let v: Value = client.get(url).send().await.ok()?.json().await.ok()?;
        v["servers"][server]["sessions"].as_u64()
    }
}

impl Bench {
    fn start_gateway(&self, tag: &str, config: &str) -> anyhow::Result<Gateway> {
        // A directory of its own: the gateway watches the config's directory, and log writes
        // there would wake its watcher during measurements.
        let dir = self.tmp.path(&format!("{tag}-config"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("manifold.toml");
        // The store (users, keys) in the scratch directory too, not in the user's data directory.
        std::fs::write(&path, format!("[store]\ndata_dir = \"data\"\n\n{config}"))?;
        let mut cmd = match self.gateway_cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&self.manifold);
                c
            }
            None => Command::new(&self.manifold),
        };
        cmd.args(["serve", "--config"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            // The gateway's default filter, pinned so that a caller's MANIFOLD_LOG can't skew it.
            .env("MANIFOLD_LOG", "info,rmcp=warn");
        let log = self.tmp.path(&format!("{tag}.log"));
        let mut proc = Proc::spawn(&format!("manifold ({tag})"), &mut cmd, log)?;
        let base = proc.first_line("manifold listening on ", Duration::from_secs(30))?;
        Ok(Gateway { proc, base })
    }

    /// An API key for `server` of the gateway started as `tag`, of a user made for it, through
    /// the CLI as an administrator would.
    fn api_key(&self, tag: &str, server: &str, roles: &[String]) -> anyhow::Result<String> {
        let path = self
            .tmp
            .path(&format!("{tag}-config"))
            .join("manifold.toml");
        let run = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new(&self.manifold)
                .args(&args[..1])
                .arg("--config")
                .arg(&path)
                .args(&args[1..])
                .output()
                .with_context(|| format!("cannot run manifold {}", args.join(" ")))?;
            if !out.status.success() {
                bail!(
                    "manifold {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let mut add = vec!["users", "add", "bench"];
        for r in roles {
            add.extend(["--role", r.as_str()]);
        }
        run(&add)?;
        let out = run(&["keys", "create", "--user", "bench", "--server", server])?;
        out.split_whitespace()
            .find(|w| w.starts_with("mfk_"))
            .map(str::to_owned)
            .with_context(|| format!("no key in what `manifold keys create` printed: {out}"))
    }

    /// `fast-upstream http` with `tools` extra tools; returns it and its MCP URL.
    fn start_http_upstream(&self, tag: &str, tools: usize) -> anyhow::Result<(Proc, String)> {
        let mut cmd = Command::new(&self.upstream);
        cmd.args(["http", "--port", "0", "--tools", &tools.to_string()]);
        let log = self.tmp.path(&format!("{tag}.log"));
        let mut proc = Proc::spawn(&format!("fast-upstream ({tag})"), &mut cmd, log)?;
        let url = proc.first_line("listening ", Duration::from_secs(10))?;
        Ok((proc, url))
    }

    fn stdio_connector(&self, name: &str, extra_args: &str) -> String {
        format!(
            "[connectors.{name}]\nkind = \"stdio\"\ncommand = {}\nargs = [\"stdio\"{extra_args}]\n\n",
            toml_str(&self.upstream.display().to_string())
        )
    }

    /// Idle RSS of a fresh gateway with one connector, then RSS with `n` idle sessions.
    async fn memory(&self, n: usize) -> anyhow::Result<Memory> {
        eprintln!("memory: idle gateway, then {n} idle sessions");
        // All the sessions come from one address: lift the per-client caps above `n`.
        let config = format!(
            "[gateway]\nmax_sessions_per_client = {cap}\ninitialize_per_minute = {cap}\n\n{}[servers.demo]\nconnectors = [\"demo\"]\n",
            self.stdio_connector("demo", ""),
            cap = n + 16,
        );
        let gw = self.start_gateway("memory", &config)?;
        gw.wait_ready(&self.client, &[("demo", 1)], Duration::from_secs(30))
            .await?;
        // Let start-up allocations settle before reading the baseline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = procs::rss_kib(gw.pid());
        let url = gw.url("demo");
        let mut openers = JoinSet::new();
        let per_task = n.div_ceil(16);
        for t in 0..16 {
            let count = per_task.min(n.saturating_sub(t * per_task));
            let (client, url) = (self.client.clone(), url.clone());
            openers.spawn(async move {
                let mut kept = Vec::with_capacity(count);
                for _ in 0..count {
                    kept.push(HttpSession::open(&client, &url).await?);
                }
                anyhow::Ok(kept)
            });
        }
        let mut kept = Vec::with_capacity(n);
        while let Some(r) = openers.join_next().await {
            kept.extend(r.context("a session opener panicked")??);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = procs::rss_kib(gw.pid());
        let registered = gw.sessions_of(&self.client, "demo").await;
        // The sessions are simply abandoned: the gateway is stopped next.
        drop(kept);
        Ok(Memory {
            idle_kib: idle,
            sessions: n,
            after_kib: after,
            registered,
            error: None,
        })
    }

    /// tools/call and tools/list through an HTTP and a stdio upstream.
    async fn proxied(&mut self) -> anyhow::Result<()> {
        let first = self.rows.len();
        let (up, up_url) = self.start_http_upstream("upstream", 0)?;
        let config = format!(
            "[connectors.up_http]\nkind = \"http\"\nurl = {}\ntransport = \"streamable\"\n\n{}[servers.http]\nconnectors = [\"up_http\"]\n\n[servers.stdio]\nconnectors = [\"up_stdio\"]\n",
            toml_str(&up_url),
            self.stdio_connector("up_stdio", "")
        );
        let gw = self.start_gateway("proxy", &config)?;
        gw.wait_ready(
            &self.client,
            &[("http", 1), ("stdio", 1)],
            Duration::from_secs(30),
        )
        .await?;
        let stdio_children = procs::children(gw.pid());
        let http_direct = || Target::Http {
            url: up_url.clone(),
            watch: Watch {
                gateway: None,
                upstreams: vec![up.pid()],
            },
        };
        let via = |server: &str, upstreams: Vec<u32>| Target::Http {
            url: gw.url(server),
            watch: Watch {
                gateway: Some(gw.pid()),
                upstreams,
            },
        };
        let bearer = self.api_key("proxy", "http", &[])?;
        let scenarios = [
            (
                "tools/call echo, HTTP upstream",
                Kind::Call,
                http_direct(),
                Op::Call {
                    tool: "echo".into(),
                },
                via("http", vec![up.pid()]),
                Op::Call {
                    tool: "up_http__echo".into(),
                },
            ),
            (
                "tools/call echo, HTTP upstream, API key",
                Kind::Call,
                http_direct(),
                Op::Call {
                    tool: "echo".into(),
                },
                Target::HttpAs {
                    url: gw.url("http"),
                    watch: Watch {
                        gateway: Some(gw.pid()),
                        upstreams: vec![up.pid()],
                    },
                    bearer,
                },
                Op::Call {
                    tool: "up_http__echo".into(),
                },
            ),
            (
                "tools/call echo, stdio upstream",
                Kind::Call,
                Target::StdioDirect,
                Op::Call {
                    tool: "echo".into(),
                },
                via("stdio", stdio_children.clone()),
                Op::Call {
                    tool: "up_stdio__echo".into(),
                },
            ),
            (
                "tools/call echo, HTTP upstream, 2026-07-28 client",
                Kind::Call,
                http_direct(),
                Op::Call {
                    tool: "echo".into(),
                },
                modern(via("http", vec![up.pid()])),
                Op::Call {
                    tool: "up_http__echo".into(),
                },
            ),
            (
                "tools/call echo, stdio upstream, 2026-07-28 client",
                Kind::Call,
                Target::StdioDirect,
                Op::Call {
                    tool: "echo".into(),
                },
                modern(via("stdio", stdio_children.clone())),
                Op::Call {
                    tool: "up_stdio__echo".into(),
                },
            ),
            (
                "tools/list (1 tool), HTTP upstream",
                Kind::List,
                http_direct(),
                Op::ListAll { expect: 1 },
                via("http", vec![up.pid()]),
                Op::ListAll { expect: 1 },
            ),
            (
                "tools/list (1 tool), stdio upstream",
                Kind::List,
                Target::StdioDirect,
                Op::ListAll { expect: 1 },
                via("stdio", stdio_children.clone()),
                Op::ListAll { expect: 1 },
            ),
        ];
        let scenarios: Vec<_> = scenarios
            .into_iter()
            .map(|(name, kind, dt, dop, gt, gop)| {
                (name, kind, dt, Arc::new(dop), gt, Arc::new(gop))
            })
            .collect();
        for conc_scenario in &scenarios {
            let (name, kind, direct, direct_op, through, through_op) = conc_scenario;
            for conc in self.concurrency.clone() {
                self.row(name, *kind, Path::Direct, conc, direct, direct_op)
                    .await;
                self.row(name, *kind, Path::Gateway, conc, through, through_op)
                    .await;
            }
        }
        // Memory that grows with the requests served (per-call state kept too long) shows here.
        let served = self.rows[first..]
            .iter()
            .filter(|r| r.path == Path::Gateway)
            .filter_map(|r| r.outcome.as_ref().ok())
            .map(|s| s.requests)
            .sum();
        self.after_load = procs::rss_kib(gw.pid()).map(|k| (k, served));
        drop(gw);
        // The same call by the same kind of member, on a gateway whose policy has 1,000 role
        // rules (20 roles of 50; the member holds all 20, one of which allows the tool).
        let roles: Vec<String> = (0..20).map(|r| format!("r{r}")).collect();
        let mut rules = String::new();
        for (i, r) in roles.iter().enumerate() {
            let mut allow: Vec<String> = (0..49)
                .map(|j| format!("\"conn{}/tool{}_*\"", (i * 49 + j) % 50, i * 49 + j))
                .collect();
            allow.push(if i == 0 {
                "\"up_http/echo\"".to_owned()
            } else {
                format!("\"up_http/danger{i}\"")
            });
            rules.push_str(&format!(
                "[roles.{r}]\nservers = [\"http\"]\nallow = [{}]\n\n",
                allow.join(", ")
            ));
        }
        let gw = self.start_gateway("policy", &format!("{config}\n{rules}"))?;
        gw.wait_ready(&self.client, &[("http", 1)], Duration::from_secs(30))
            .await?;
        let bearer = self.api_key("policy", "http", &roles)?;
        let through = Target::HttpAs {
            url: gw.url("http"),
            watch: Watch {
                gateway: Some(gw.pid()),
                upstreams: vec![up.pid()],
            },
            bearer,
        };
        let direct = Target::Http {
            url: up_url.clone(),
            watch: Watch {
                gateway: None,
                upstreams: vec![up.pid()],
            },
        };
        let (dop, gop) = (
            Arc::new(Op::Call {
                tool: "echo".into(),
            }),
            Arc::new(Op::Call {
                tool: "up_http__echo".into(),
            }),
        );
        let name = "tools/call echo, HTTP upstream, API key, 1,000 role rules";
        for conc in self.concurrency.clone() {
            self.row(name, Kind::Call, Path::Direct, conc, &direct, &dop)
                .await;
            self.row(name, Kind::Call, Path::Gateway, conc, &through, &gop)
                .await;
        }
        drop(gw);
        drop(up);
        Ok(())
    }

    /// tools/list of one virtual server bundling `connectors` × `tools` tools.
    async fn catalog(
        &mut self,
        connectors: usize,
        tools: usize,
        page_size: usize,
    ) -> anyhow::Result<()> {
        let total = connectors * tools;
        eprintln!("catalog: starting {connectors} stdio connectors with {tools} tools each");
        let mut config = format!("[gateway]\npage_size = {page_size}\n\n");
        let names: Vec<String> = (0..connectors).map(|i| format!("c{i:02}")).collect();
        let args = format!(", \"--tools\", \"{tools}\"");
        for n in &names {
            config.push_str(&self.stdio_connector(n, &args));
        }
        let list = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        config.push_str(&format!("[servers.big]\nconnectors = [{list}]\n\n"));
        for n in &names {
            config.push_str(&format!(
                "[servers.big.curation.{n}]\nexclude = [\"echo\"]\n\n"
            ));
        }
        let gw = self.start_gateway("catalog", &config)?;
        gw.wait_ready(&self.client, &[("big", total)], Duration::from_secs(120))
            .await?;
        let (up, up_url) = self.start_http_upstream("catalog-upstream", total.saturating_sub(1))?;
        let name = format!("tools/list ({connectors}×{tools} = {total} tools)");
        let op = Arc::new(Op::ListAll { expect: total });
        let direct = Target::Http {
            url: up_url,
            watch: Watch {
                gateway: None,
                upstreams: vec![up.pid()],
            },
        };
        let through = Target::Http {
            url: gw.url("big"),
            watch: Watch {
                gateway: Some(gw.pid()),
                upstreams: procs::children(gw.pid()),
            },
        };
        for conc in self.concurrency.clone() {
            self.row(&name, Kind::Catalog, Path::Direct, conc, &direct, &op)
                .await;
            self.row(&name, Kind::Catalog, Path::Gateway, conc, &through, &op)
                .await;
        }
        drop(up);
        drop(gw);
        Ok(())
    }

    /// Open a session on `target`, measure `op` at `conc`, record the row (or its failure).
    async fn row(
        &mut self,
        scenario: &str,
        kind: Kind,
        path: Path,
        conc: usize,
        target: &Target,
        op: &Arc<Op>,
    ) {
        let label = match path {
            Path::Direct => "direct",
            Path::Gateway => "gateway",
        };
        eprintln!("{scenario}: {label}, concurrency {conc}");
        let spec = RunSpec {
            concurrency: conc,
            ..self.spec
        };
        let outcome = async {
            let (session, watch) = match target {
                Target::Http { url, watch } => (
                    Session::Http(HttpSession::open(&self.client, url).await?),
                    watch.clone(),
                ),
                Target::HttpModern { url, watch } => (
                    Session::Http(HttpSession::modern(&self.client, url)),
                    watch.clone(),
                ),
                Target::HttpAs { url, watch, bearer } => (
                    Session::Http(
                        HttpSession::open(&client::http_client_as(Some(bearer))?, url).await?,
                    ),
                    watch.clone(),
                ),
                Target::StdioDirect => {
                    let log = self.tmp.path("stdio-direct.log");
                    let s = StdioSession::open(&self.upstream, &["stdio"], log).await?;
                    let watch = Watch {
                        gateway: None,
                        upstreams: vec![s.pid()],
                    };
                    (Session::Stdio(s), watch)
                }
            };
            let session = Arc::new(session);
            let sample = load::measure(session.clone(), op.clone(), &spec, &watch).await;
            if let Ok(s) = Arc::try_unwrap(session) {
                s.close().await;
            }
            sample
        }
        .await
        .map_err(|e| format!("{e:#}"));
        if let Err(e) = &outcome {
            eprintln!("  failed: {e}");
        }
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            kind,
            path,
            concurrency: conc,
            outcome,
        });
    }
}

/// The same target, reached by a 2026-07-28 client.
fn modern(t: Target) -> Target {
    match t {
        Target::Http { url, watch } | Target::HttpModern { url, watch } => {
            Target::HttpModern { url, watch }
        }
        other => other,
    }
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn short(s: &str) -> String {
    s.chars().take(600).collect()
}

/// `5s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s or 500ms"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 5s or 500ms")),
    }
}
