//! The `manifold` binary: CLI, logging, wiring, hot reload (file watch and SIGHUP), signals and
//! graceful shutdown. The only crate that uses `anyhow`.

/// jemalloc rather than the system allocator: see the workspace manifest and the README's
/// performance section.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod admin;
mod explain;
mod reload;
mod tools;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use manifold_config::{Config, TransportSpec};
use manifold_server::Gateway;

#[derive(Parser)]
#[command(
    name = "manifold",
    version,
    about = "Self-hosted gateway serving Virtual MCP servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML config file (see docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
        /// Override `gateway.listen` (e.g. 127.0.0.1:0 for a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a config file, reporting every problem found, and print what would be served.
    Check {
        /// The TOML config file to validate (see docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
        /// Also start every connector and report its tools, prompts and resources.
        #[arg(long)]
        probe: bool,
        /// How long --probe waits for each connector (e.g. 30s, 2m).
        #[arg(long, default_value = "60s")]
        probe_timeout: String,
    },
    /// Manage local users (in the store of the config's `[store]`).
    Users {
        /// The TOML config file whose store holds the users.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        command: admin::Users,
    },
    /// Manage API keys for headless agents and CI.
    Keys {
        /// The TOML config file whose store holds the keys.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        command: admin::Keys,
    },
    /// Explain what the config's roles decide (exit status 0: allowed, 3: denied).
    Policy {
        /// The TOML config file whose roles (and store, for the user) decide.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        command: admin::PolicyCmd,
    },
    /// Review the tools of virtual servers with `tool_updates = "review"`: what awaits
    /// review, and approve or reject it (in the config's store, for every gateway on it).
    Tools {
        /// The TOML config file whose store holds the reviews.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        command: tools::ToolsCmd,
    },
    /// Convert a Claude-Desktop-style {"mcpServers": {...}} JSON file to connector TOML.
    Import {
        /// The JSON file ("-" for standard input).
        file: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            log_json,
        } => {
            init_logging(log_json);
            runtime().and_then(|rt| rt.block_on(serve(&config, listen)))
        }
        Command::Check {
            config,
            probe,
            probe_timeout,
        } => {
            if probe {
                init_logging(false);
            }
            runtime().and_then(|rt| rt.block_on(check(&config, probe, &probe_timeout)))
        }
        Command::Users { config, command } => {
            runtime().and_then(|rt| rt.block_on(admin::users(&config, command)))
        }
        Command::Keys { config, command } => {
            runtime().and_then(|rt| rt.block_on(admin::keys(&config, command)))
        }
        Command::Policy { config, command } => {
            match runtime().and_then(|rt| rt.block_on(admin::policy(&config, command))) {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::from(3),
                Err(e) => Err(e),
            }
        }
        Command::Tools { config, command } => {
            runtime().and_then(|rt| rt.block_on(tools::run(&config, command)))
        }
        Command::Import { file } => import(&file),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MANIFOLD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    // Colour only on a terminal: a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The one place the gateway reads its own environment.
pub fn env_lookup() -> manifold_upstream::EnvLookup {
    Arc::new(|name: &str| std::env::var(name).ok())
}

/// Load and validate the config. Every problem is printed to standard error, one per line; the
/// error returned then only counts them ("3 errors in FILE").
fn load(path: &Path) -> anyhow::Result<Config> {
    let env = env_lookup();
    match Config::load(path, &|k: &str| env(k)) {
        Ok(config) => Ok(config),
        Err(errors) if errors.len() == 1 => Err(anyhow::anyhow!("{errors}")),
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            Err(anyhow::anyhow!("{}", errors.summary()))
        }
    }
}

async fn serve(path: &Path, listen: Option<String>) -> anyhow::Result<()> {
    let config = load(path)?;
    for w in config.warnings() {
        tracing::warn!("{w} (see docs/config.md)");
    }
    let addr = match listen {
        Some(l) => l
            .parse()
            .with_context(|| format!("--listen {l:?} is not an address like 127.0.0.1:8730"))?,
        None => config.gateway.listen,
    };
    if !addr.ip().is_loopback() && !config.auth.required {
        anyhow::bail!(
            "refusing to listen on {addr} without sign-in: other machines could call every tool with the gateway's credentials. Set [auth] required = true in the config, or listen on 127.0.0.1"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr}: is another process using it? set gateway.listen or --listen"
        )
    })?;
    let local = listener.local_addr()?;
    let watch = config.gateway.watch;
    let servers: Vec<String> = config.servers.keys().cloned().collect();
    let store = admin::open(&config).await?;
    tracing::info!(store = %store.shown(), "store open");
    if config.auth.required {
        admin::first_admin(&store).await?;
    }
    let oauth = manifold_auth::AuthServer::start(store.clone(), &config.auth, local)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the authorization server: {e}"))?;
    tracing::info!(issuer = %oauth.issuer, required = config.auth.required, "authorization server");
    let roles = Arc::new(role_policy(&config)?);
    let auth = Arc::new(manifold_auth::StoreAuth::with_oauth(
        store.clone(),
        oauth.clone(),
    ));
    let reviews = Arc::new(manifold_router::Reviews::new(
        tools::approved(&store).await?,
    ));
    let seams = manifold_server::Seams {
        authenticate: auth.clone(),
        policy: roles.clone(),
        reviews: reviews.clone(),
        ..manifold_server::Seams::default()
    };
    let admin_roles = config.auth.admin_roles.clone();
    let gw = Gateway::start_with(config, env_lookup(), seams);
    oauth.attach(&gw);
    let _reviewer = tools::spawn(gw.clone(), store.clone(), reviews);
    let admin = explain::router(explain::Admin {
        gw: gw.clone(),
        roles: roles.clone(),
        store,
        auth,
        admin_roles,
    });
    // One line that scripts (and the tests) read to find the port.
    println!("manifold listening on http://{local}");
    for s in &servers {
        tracing::info!(url = %format!("http://{local}/mcp/{s}"), "virtual server");
    }
    let _reloader = reload::spawn(path.to_path_buf(), gw.clone(), roles, watch)?;
    manifold_server::serve_with(listener, gw, oauth.router().merge(admin), shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: draining requests and stopping connectors");
}

/// The configuration's Cedar conditions, compiled (`None`: there are none); every problem with
/// its file, line and column.
pub(crate) fn conditions(
    config: &Config,
) -> Result<Option<manifold_policy::Conditions>, Vec<String>> {
    let sources: Vec<manifold_policy::Source> = config
        .policy
        .iter()
        .map(|t| manifold_policy::Source {
            name: t.name.clone(),
            text: t.text.clone(),
            line_offset: t.line_offset,
        })
        .collect();
    manifold_policy::Conditions::compile(&sources)
}

/// The roles and conditions of `config`, as one policy; Cedar errors are printed, one a line.
pub(crate) fn role_policy(config: &Config) -> anyhow::Result<manifold_policy::RolePolicy> {
    let conditions = conditions(config).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        anyhow::anyhow!(
            "{} error(s) in the Cedar policies of [policy] (see docs/config.md)",
            errors.len()
        )
    })?;
    let policy = manifold_policy::RolePolicy::new(std::iter::empty());
    policy.replace_all(
        role_rules(&config.roles).iter().map(|(n, r)| (n, r)),
        conditions,
    );
    policy.replace_groups(config.groups.iter());
    Ok(policy)
}

/// The configuration's roles, as the policy takes them.
pub(crate) fn role_rules(
    roles: &std::collections::BTreeMap<String, manifold_config::RoleSpec>,
) -> Vec<(String, manifold_policy::RoleRules)> {
    roles
        .iter()
        .map(|(name, r)| {
            let rules = manifold_policy::RoleRules {
                servers: r.servers.clone(),
                allow: r.allow.clone(),
                deny: r.deny.clone(),
                ask: r.ask.clone(),
            };
            (name.clone(), rules)
        })
        .collect()
}

async fn check(path: &Path, probe: bool, probe_timeout: &str) -> anyhow::Result<()> {
    let config = load(path)?;
    let wait = manifold_config::parse_duration(probe_timeout)
        .with_context(|| format!("--probe-timeout {probe_timeout:?} is not a duration like 30s"))?;
    let conditions = conditions(&config).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        anyhow::anyhow!(
            "{} error(s) in the Cedar policies of {} (see [policy] in docs/config.md)",
            errors.len(),
            path.display()
        )
    })?;
    println!("{}: OK", path.display());
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    println!("listen: {}", config.gateway.listen);
    println!("connectors:");
    for (id, spec) in &config.connectors {
        let what = match &spec.transport {
            TransportSpec::Stdio(s) => format!("stdio  {} {}", s.command, s.display_args()),
            TransportSpec::Http(h) => format!("http   {}", h.display_url()),
        };
        println!("  {id:<20} {what}");
    }
    println!("virtual servers:");
    for (name, s) in &config.servers {
        let names: Vec<&str> = s.connectors.iter().map(|u| u.connector.as_str()).collect();
        println!("  /mcp/{name:<15} {}", names.join(", "));
    }
    if !config.roles.is_empty() || conditions.is_some() {
        println!(
            "policy: {} role(s), {} Cedar condition(s)",
            config.roles.len(),
            conditions.as_ref().map_or(0, |c| c.len())
        );
    }
    if !config.auth.providers.is_empty() {
        println!("identity providers:");
        for (name, p) in &config.auth.providers {
            println!("  {name:<20} {}", p.issuer);
        }
    }
    if !probe {
        return Ok(());
    }
    println!("probe:");
    let mut failed = false;
    for (name, found) in manifold_auth::probe_providers(&config.auth.providers).await {
        match found {
            Ok(what) => println!("  {name:<20} up: {what}"),
            Err(why) => {
                failed = true;
                println!("  {name:<20} {why}");
            }
        }
    }
    // Starting the connectors needs no store: the probe serves no one.
    let gw = Gateway::start(config, env_lookup());
    let connectors = gw.connectors();
    let waits = connectors.iter().map(|c| c.wait_ready(wait));
    let ready = futures::future::join_all(waits).await;
    for (c, up) in connectors.iter().zip(ready) {
        let h = c.health();
        if up {
            println!(
                "  {:<20} up: {} tools, {} prompts, {} resources, {} resource templates",
                c.id().as_str(),
                h.tools,
                h.prompts,
                h.resources,
                h.resource_templates
            );
        } else {
            failed = true;
            println!(
                "  {:<20} {:?}: {}",
                c.id().as_str(),
                h.state,
                h.last_error
                    .unwrap_or_else(|| "did not start in time".into())
            );
        }
    }
    // Let catalog events reach the virtual servers before reading them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for vs in gw.servers() {
        vs.rebuild();
        let cat = vs.catalog();
        println!(
            "  /mcp/{:<15} {} tools, {} prompts, {} resources",
            vs.name(),
            cat.tools.len(),
            cat.prompts.len(),
            cat.resources.len()
        );
        for c in &cat.conflicts {
            failed = true;
            println!("    conflict: {c}");
        }
    }
    gw.shutdown().await;
    anyhow::ensure!(!failed, "the probe found problems (see above)");
    Ok(())
}

fn import(file: &Path) -> anyhow::Result<()> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let out = manifold_config::import_claude_desktop(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    print!("{}", out.toml);
    for note in &out.notes {
        eprintln!("note: {note}");
    }
    if !out.variables.is_empty() {
        eprintln!(
            "note: secrets were not copied; export these before `manifold serve`: {}",
            out.variables.join(", ")
        );
    }
    if out.names.is_empty() {
        eprintln!("note: no server was imported");
        return Ok(());
    }
    eprintln!(
        "note: add the connectors to a virtual server, e.g.\n[servers.main]\nconnectors = [{}]",
        out.names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
