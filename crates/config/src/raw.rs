//! The serde mirror of the TOML file: every table denies unknown keys, nothing is validated yet.
//! The file is read table by table, so that one bad connector does not hide another's errors.

use std::collections::BTreeMap;

use serde::{Deserialize, de::DeserializeOwned};
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};

use crate::{
    ConfigError,
    text::{KeyPaths, Source},
};

/// The whole file, assembled from its tables (each deserialised on its own).
#[derive(Debug, Default)]
pub struct RawConfig {
    pub gateway: RawGateway,
    pub store: RawStore,
    pub auth: RawAuth,
    /// `None` for a connector whose table did not deserialise (its errors are reported): its
    /// name is still defined, so servers that use it get no second error.
    pub connectors: BTreeMap<String, Option<RawConnector>>,
    pub servers: BTreeMap<String, RawServer>,
    pub roles: BTreeMap<String, RawRole>,
    pub groups: BTreeMap<String, RawGroup>,
    pub policy: RawPolicy,
}

/// `[groups.NAME]`: the roles a group gives its members.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
}

/// `[policy]`: Cedar conditions, inline and in files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub cedar: Option<Spanned<String>>,
    pub cedar_files: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    #[serde(default)]
    pub servers: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub ask: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub url: Option<Spanned<String>>,
    pub data_dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub required: Option<bool>,
    pub issuer: Option<Spanned<String>>,
    pub access_token_lifetime: Option<Spanned<String>>,
    pub refresh_token_lifetime: Option<Spanned<String>>,
    pub dynamic_registration: Option<bool>,
    pub registrations_per_hour: Option<u32>,
    pub max_clients: Option<u32>,
    pub unused_client_expiry: Option<Spanned<String>>,
    pub logins_per_minute: Option<u32>,
    pub client_metadata_documents: Option<bool>,
    pub client_metadata_private_hosts: Option<Vec<Spanned<String>>>,
    pub client_metadata_ca: Option<Spanned<String>>,
    pub clients: Option<BTreeMap<String, Spanned<RawClient>>>,
    pub password_login: Option<bool>,
    pub providers: Option<BTreeMap<String, Spanned<RawProvider>>>,
    pub admin_roles: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub issuer: Spanned<String>,
    pub client_id: Spanned<String>,
    pub client_secret: Option<Spanned<String>>,
    pub label: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub groups_claim: Option<Spanned<String>>,
    pub name_claim: Option<String>,
    pub email_claim: Option<String>,
    pub userinfo: Option<bool>,
    pub roles: Option<BTreeMap<String, Vec<String>>>,
    pub default_roles: Option<Vec<String>>,
    pub id_jag: Option<bool>,
    pub reauthenticate_after: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
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
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
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
    pub tool_updates: Option<Spanned<String>>,
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

impl RawConfig {
    /// Parse the file, then deserialise `[gateway]`, each `[connectors.NAME]` and each
    /// `[servers.NAME]` on its own, collecting their errors. Only a syntax error stops at once.
    pub fn read(src: &Source<'_>) -> Result<(Self, Vec<ConfigError>), ConfigError> {
        let root = DeTable::parse(src.text).map_err(|e| src.toml_error(&e))?;
        let keys = KeyPaths::of(root.get_ref());
        let mut reader = Reader {
            src,
            keys: &keys,
            errors: Vec::new(),
        };
        let mut raw = RawConfig::default();
        for (key, value) in root.into_inner() {
            match key.get_ref().as_ref() {
                "gateway" => raw.gateway = reader.one(value).unwrap_or_default(),
                "store" => raw.store = reader.one(value).unwrap_or_default(),
                "auth" => raw.auth = reader.one(value).unwrap_or_default(),
                "connectors" => {
                    for (name, table) in reader.tables("connectors", value) {
                        let connector = reader.one(table);
                        raw.connectors.insert(name, connector);
                    }
                }
                "servers" => {
                    for (name, table) in reader.tables("servers", value) {
                        if let Some(server) = reader.one(table) {
                            raw.servers.insert(name, server);
                        }
                    }
                }
                "policy" => raw.policy = reader.one(value).unwrap_or_default(),
                "roles" => {
                    for (name, table) in reader.tables("roles", value) {
                        if let Some(role) = reader.one(table) {
                            raw.roles.insert(name, role);
                        }
                    }
                }
                "groups" => {
                    for (name, table) in reader.tables("groups", value) {
                        if let Some(group) = reader.one(table) {
                            raw.groups.insert(name, group);
                        }
                    }
                }
                _ => reader.errors.push(src.unknown_top_level_key(&key)),
            }
        }
        Ok((raw, reader.errors))
    }
}

struct Reader<'a> {
    src: &'a Source<'a>,
    keys: &'a KeyPaths,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn one<T: DeserializeOwned>(&mut self, value: Spanned<DeValue<'_>>) -> Option<T> {
        T::deserialize(ValueDeserializer::from(value))
            .map_err(|e| self.errors.push(self.src.serde_error(&e, self.keys)))
            .ok()
    }

    /// The named sub-tables of `[connectors]` or `[servers]`.
    fn tables<'i>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'i>>,
    ) -> Vec<(String, Spanned<DeValue<'i>>)> {
        let at = self.src.at(&value);
        match value.into_inner() {
            DeValue::Table(t) => t
                .into_iter()
                .map(|(k, v)| (k.into_inner().into_owned(), v))
                .collect(),
            other => {
                let found = match other.type_str() {
                    "array" => "a list".to_owned(),
                    "integer" => "an integer".to_owned(),
                    t => format!("a {t}"),
                };
                self.errors.push(at.err(format!(
                    "{key}: expected a table of `[{key}.NAME]` tables, found {found}"
                )));
                Vec::new()
            }
        }
    }
}
