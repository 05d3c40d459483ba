//! The serde mirror of the TOML file: every table denies unknown keys, nothing is validated yet.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub connectors: BTreeMap<String, RawConnector>,
    #[serde(default)]
    pub servers: BTreeMap<String, RawServer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub listen: Option<Spanned<String>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub session_idle_timeout: Option<Spanned<String>>,
    pub max_body_bytes: Option<u64>,
    pub sse_keep_alive: Option<Spanned<String>>,
    pub page_size: Option<u32>,
    pub watch: Option<bool>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub input_wait: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub public_detail: Option<bool>,
    pub max_connections: Option<u32>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub body_read_timeout: Option<Spanned<String>>,
    pub idle_connection_timeout: Option<Spanned<String>>,
    pub max_sessions: Option<u32>,
    pub max_sessions_per_client: Option<u32>,
    pub initialize_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnector {
    pub kind: Spanned<String>,
    // stdio
    pub command: Option<Spanned<String>>,
    pub args: Option<Vec<Spanned<String>>>,
    pub env: Option<BTreeMap<String, Spanned<String>>>,
    pub env_passthrough: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub start: Option<Spanned<String>>,
    pub max_line_bytes: Option<u64>,
    pub stderr_lines_per_minute: Option<u32>,
    // http
    pub url: Option<Spanned<String>>,
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    pub transport: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    // both
    pub call_timeout: Option<Spanned<String>>,
    pub sessions: Option<Spanned<String>>,
    pub max_sessions: Option<u32>,
    pub era: Option<Spanned<String>>,
    pub restart: Option<RawRestart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    pub initial_backoff: Option<Spanned<String>>,
    pub max_backoff: Option<Spanned<String>>,
    pub max_failures: Option<u32>,
    pub window: Option<Spanned<String>>,
    pub open_for: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub connectors: Vec<Spanned<String>>,
    pub separator: Option<Spanned<String>>,
    pub instructions: Option<String>,
    pub title: Option<String>,
    #[serde(default)]
    pub curation: BTreeMap<String, RawCuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCuration {
    pub prefix: Option<bool>,
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    #[serde(default)]
    pub tools: BTreeMap<String, RawToolOverride>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToolOverride {
    pub rename: Option<Spanned<String>>,
    pub description: Option<String>,
    pub hide_args: Option<Vec<String>>,
    pub pin_args: Option<toml::Table>,
}
