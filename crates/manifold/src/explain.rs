//! What the roles decide for one user and one item, and why: the one answer of
//! `manifold policy explain` and of `GET /admin/policy/explain`.

use manifold_config::Config;
use manifold_policy::{Item, ItemKind, Principal, RolePolicy, Via};
use manifold_store::Store;
use serde::Deserialize;

/// The question, as the CLI's options or the endpoint's query give it.
#[derive(Debug, Default, Deserialize, clap::Args)]
pub struct Ask {
    /// The user, as `users list` shows them (a local name, or a member's e-mail).
    #[arg(long, required_unless_present = "anonymous")]
    pub user: Option<String>,
    /// The identity provider's issuer, when members of several have this name.
    #[arg(long)]
    pub issuer: Option<String>,
    /// An anonymous caller instead of a user.
    #[arg(long, conflicts_with_all = ["user", "issuer"])]
    #[serde(default)]
    pub anonymous: bool,
    /// The virtual server.
    #[arg(long)]
    pub server: String,
    /// A tool, as CONNECTOR/NAME (the connector's id and the upstream's own name).
    #[arg(long, conflicts_with_all = ["prompt", "resource"])]
    pub tool: Option<String>,
    /// A prompt, as CONNECTOR/NAME.
    #[arg(long, conflicts_with = "resource")]
    pub prompt: Option<String>,
    /// A resource, as CONNECTOR/URI.
    #[arg(long)]
    pub resource: Option<String>,
    /// The call's arguments, a JSON object.
    #[arg(long)]
    pub args: Option<String>,
    /// The OAuth client the member calls through (its client_id), for conditions on
    /// `context.client`.
    #[arg(long)]
    pub client: Option<String>,
    /// The address the request comes from, for conditions on `context.source`.
    #[arg(long)]
    pub source: Option<String>,
}

/// The answer.
#[derive(Debug, serde::Serialize)]
pub struct Answer {
    pub allowed: bool,
    /// Allowed once the member confirms the call (a role's `ask`).
    pub confirm: bool,
    /// Who, as administrators see them.
    pub who: String,
    /// What they would do.
    pub what: String,
    /// What decided, a line each.
    pub because: Vec<String>,
}

impl Answer {
    /// "allowed: WHO may WHAT" (or "denied: WHO may not WHAT").
    pub fn headline(&self) -> String {
        if self.allowed && self.confirm {
            format!(
                "allowed once confirmed: {} may {}, after confirming the call when asked",
                self.who, self.what
            )
        } else if self.allowed {
            format!("allowed: {} may {}", self.who, self.what)
        } else {
            format!("denied: {} may not {}", self.who, self.what)
        }
    }
}

/// The decision of `policy` on `ask`, under `config`'s servers and `store`'s users (`None`
/// only for an anonymous caller); a bad question is an error saying what is wrong.
pub async fn explain(
    config: &Config,
    store: Option<&Store>,
    policy: &RolePolicy,
    ask: &Ask,
) -> Result<Answer, String> {
    let server = &ask.server;
    let Some(spec) = config.servers.get(server) else {
        return Err(format!(
            "no virtual server {server:?} in the config: it has {}",
            config
                .servers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let mut arguments = None;
    if let Some(a) = &ask.args {
        match serde_json::from_str::<serde_json::Value>(a) {
            Ok(serde_json::Value::Object(o)) => arguments = Some(o),
            Ok(_) => {
                return Err(
                    "the arguments (--args) must be a JSON object, such as '{\"query\": \"SELECT 1\"}'".into(),
                );
            }
            Err(e) => return Err(format!("the arguments (--args) are not JSON: {e}")),
        }
    }
    let via = Via {
        source: match ask.source.as_deref() {
            None => None,
            Some(a) => Some(a.parse::<std::net::IpAddr>().map_err(|_| {
                format!("the source (--source) {a:?} is not an IP address, such as 10.1.2.3 or ::1")
            })?),
        },
    };
    let written = [
        (ItemKind::Tool, &ask.tool, "call the tool"),
        (ItemKind::Prompt, &ask.prompt, "get the prompt"),
        (ItemKind::Resource, &ask.resource, "read the resource"),
    ];
    let mut named = written.iter().filter(|(_, w, _)| w.is_some());
    let item = match (named.next(), named.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err("name one tool, prompt or resource".into()),
        (Some((kind, Some(w), verb)), None) => {
            let Some((connector, name)) = w
                .split_once('/')
                .filter(|(c, n)| !c.is_empty() && !n.is_empty())
            else {
                return Err(format!(
                    "write {w:?} as CONNECTOR/NAME: the connector's id in the config and the upstream's own name (a resource: CONNECTOR/URI), e.g. fa/echo"
                ));
            };
            if !spec
                .connectors
                .iter()
                .any(|c| c.connector.as_str() == connector)
            {
                return Err(format!(
                    "the virtual server {server:?} has no connector {connector:?}: it has {}",
                    spec.connectors
                        .iter()
                        .map(|c| c.connector.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Some((*kind, connector, name, *verb))
        }
        (Some(_), None) => unreachable!("filtered on is_some"),
    };
    let (who, shown, disabled) = if ask.anonymous {
        if ask.user.is_some() {
            return Err("ask for a user or for an anonymous caller, not both".into());
        }
        (
            Principal::anonymous(),
            "an anonymous caller".to_owned(),
            false,
        )
    } else {
        let Some(name) = ask.user.as_deref().filter(|n| !n.is_empty()) else {
            return Err("name the user (or ask for an anonymous caller)".into());
        };
        let store = store.ok_or("the store is needed to find a user")?;
        let u = crate::admin::any_user(store, name, ask.issuer.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        let groups = if u.groups.is_empty() {
            String::new()
        } else {
            format!("; groups: {}", u.groups.join(", "))
        };
        let shown = format!(
            "{} ({}; roles: {}{groups})",
            u.name,
            if u.issuer == manifold_store::LOCAL_ISSUER {
                "a local user".to_owned()
            } else {
                format!("signs in through {}", u.issuer)
            },
            if u.roles.is_empty() {
                "-".to_owned()
            } else {
                u.roles.join(", ")
            }
        );
        let disabled = u.disabled;
        (
            Principal::user(u.issuer, u.subject, u.roles, Vec::new()).with_groups(u.groups),
            shown,
            disabled,
        )
    };
    let what = match &item {
        None => format!("connect to {server:?}"),
        Some((_, c, n, verb)) => format!("{verb} {c}/{n} of {server:?}"),
    };
    let who = match ask.client.as_deref() {
        Some(c) if !c.is_empty() => who.with_client(c),
        _ => who,
    };
    let why = policy.explain(
        &who,
        server,
        via,
        item.map(|(kind, connector, name, _)| Item {
            kind,
            connector,
            name,
            exposed: name,
            arguments: arguments.as_ref(),
        })
        .as_ref(),
    );
    let mut because = why.because;
    let mut allowed = why.allowed;
    if disabled {
        allowed = false;
        because.insert(
            0,
            "the user is disabled: every request of theirs is refused before any rule".into(),
        );
    }
    Ok(Answer {
        allowed,
        confirm: allowed && why.confirm,
        who: shown,
        what,
        because,
    })
}

/// What `GET /admin/policy/explain` needs: the live configuration (the gateway's), roles and
/// users, and the check of the administrator's key.
pub struct Admin {
    pub gw: std::sync::Arc<manifold_server::Gateway>,
    pub roles: std::sync::Arc<RolePolicy>,
    pub store: Store,
    pub auth: std::sync::Arc<manifold_auth::StoreAuth>,
    /// `auth.admin_roles` as the gateway started (a change to `[auth]` needs a restart).
    pub admin_roles: Vec<String>,
}

/// The administration endpoints: `GET /admin/policy/explain?server=S&user=U&tool=C/N…` (the
/// query names `Ask`'s fields), for an administrator's API key; JSON answers, errors
/// included.
pub fn router(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route("/admin/policy/explain", axum::routing::get(endpoint))
        .with_state(std::sync::Arc::new(admin))
}

async fn endpoint(
    axum::extract::State(a): axum::extract::State<std::sync::Arc<Admin>>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<Ask>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::{Json, http::StatusCode, response::IntoResponse};
    let error = |status: u16, message: String| {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (status, Json(serde_json::json!({"error": message}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"manifold admin\""),
            );
        }
        r
    };
    let config = a.gw.config();
    let admin = match a.auth.administrator(&headers, &a.admin_roles).await {
        Ok(u) => u,
        Err((status, why)) => {
            tracing::warn!(why, "an administration request was refused");
            return error(status, why);
        }
    };
    let ask = match query {
        Ok(q) => q.0,
        Err(e) => {
            return error(
                400,
                format!(
                    "{}: the query takes server, and user (with issuer) or anonymous=true, and one of tool, prompt or resource (CONNECTOR/NAME), and args (a JSON object)",
                    e.body_text()
                ),
            );
        }
    };
    match explain(&config, Some(&a.store), &a.roles, &ask).await {
        Ok(answer) => {
            tracing::info!(admin = %admin.name, question = %answer.headline(), "policy explained");
            let mut r = Json(answer).into_response();
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(why) => error(400, why),
    }
}
