//! Who is calling and what they may do. The edge authenticates a request into a `Principal`;
//! the pipeline describes what the request asks for as an `Action`; a `Policy` decides; and the
//! decision, if it allows, is a `Permit` — the only thing the router accepts before it sends
//! anything upstream or pages a list. Pure and synchronous: no I/O, no clock.
//!
//! One decision per request. A list request is decided once too: the policy answers it with
//! the per-item view (`Decision::Only`) that the page is built with, and that view must agree
//! with the decisions for using each item, so that what a caller can list is what they can use.

mod cedar;
#[cfg(test)]
mod reference;
mod roles;
#[cfg(test)]
mod tests;

pub use cedar::{Conditions, SCHEMA, Source};
pub use roles::{ANONYMOUS_ROLE, Explanation, RolePolicy, RoleRules};

use std::{fmt, sync::Arc};

/// A JSON object (tool arguments), as the router passes it.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The authenticated caller: a stable identity, the roles it holds and the scopes of the token
/// it presented. Anonymous until the gateway authenticates callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    id: PrincipalId,
    /// Manifold roles (from local users or mapped from the identity provider's groups).
    pub roles: Vec<String>,
    /// The scopes of the credential the request presented; they only ever narrow the roles.
    pub scopes: Vec<String>,
    /// The groups they belong to (local, or their identity provider's): `[groups.NAME]` gives
    /// each group's members roles.
    pub groups: Vec<String>,
    /// The OAuth client (its `client_id`) the presented access token was issued to: the
    /// application the member uses. `None` for an API key and for anonymous callers.
    pub client: Option<String>,
}

/// Who a principal is: nobody in particular, or a user identified by (issuer, subject) —
/// never by email, which can change hands.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalId {
    Anonymous,
    User { issuer: String, subject: String },
}

impl Principal {
    /// The caller of a gateway without authentication.
    pub fn anonymous() -> Self {
        Self {
            id: PrincipalId::Anonymous,
            roles: Vec::new(),
            scopes: Vec::new(),
            groups: Vec::new(),
            client: None,
        }
    }

    pub fn user(
        issuer: impl Into<String>,
        subject: impl Into<String>,
        roles: Vec<String>,
        scopes: Vec<String>,
    ) -> Self {
        Self {
            id: PrincipalId::User {
                issuer: issuer.into(),
                subject: subject.into(),
            },
            roles,
            scopes,
            groups: Vec::new(),
            client: None,
        }
    }

    /// The same principal, a member of `groups`.
    pub fn with_groups(mut self, groups: Vec<String>) -> Self {
        self.groups = groups;
        self
    }

    /// The same principal, calling through the OAuth client `client_id`.
    pub fn with_client(mut self, client_id: impl Into<String>) -> Self {
        self.client = Some(client_id.into());
        self
    }

    pub fn id(&self) -> &PrincipalId {
        &self.id
    }

    pub fn is_anonymous(&self) -> bool {
        self.id == PrincipalId::Anonymous
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalId::Anonymous => f.write_str("anonymous"),
            PrincipalId::User { issuer, subject } => write!(f, "{subject}@{issuer}"),
        }
    }
}

/// The kinds of items a virtual server lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ItemKind {
    Tool,
    Prompt,
    Resource,
    ResourceTemplate,
}

/// What a request does with one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `tools/call`.
    Call,
    /// `prompts/get`.
    Get,
    /// `resources/read`.
    Read,
    /// `resources/subscribe` (and `subscriptions/listen` for a resource).
    Subscribe,
    /// `completion/complete` for a prompt's or resource template's argument.
    Complete,
}

impl ItemKind {
    /// What listing an item lets a caller do with it: an item is listed to a caller exactly
    /// when this use of it is allowed.
    pub fn listed_use(self) -> Verb {
        match self {
            ItemKind::Tool => Verb::Call,
            ItemKind::Prompt => Verb::Get,
            ItemKind::Resource | ItemKind::ResourceTemplate => Verb::Read,
        }
    }
}

/// One item of a virtual server, as a policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub kind: ItemKind,
    pub connector: &'a str,
    /// The upstream's own name of the tool or prompt, or the upstream URI (template).
    pub name: &'a str,
    /// The name or URI the client sees (namespaced, renamed).
    pub exposed: &'a str,
    /// A call's arguments as they will go upstream (pinned ones included), if any.
    pub arguments: Option<&'a JsonObject>,
}

/// What a request asks for, on which virtual server.
#[derive(Clone, Copy, Debug)]
pub struct Action<'a> {
    pub server: &'a str,
    pub kind: ActionKind<'a>,
    /// How the request arrived (set by `authorize` from what the edge saw).
    pub via: Via,
}

/// Facts about how a request arrived that are not the caller's identity, for conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Via {
    /// The address of the TCP peer that sent the request (behind a reverse proxy: the
    /// proxy's); for a notification, that of the latest request of the session or stream it
    /// goes to; `None` where none is known.
    pub source: Option<std::net::IpAddr>,
}

#[derive(Clone, Copy, Debug)]
pub enum ActionKind<'a> {
    /// Connect at all: `initialize`, `server/discover`, `ping`, `logging/setLevel`, and the
    /// `subscriptions/listen` stream for list changes.
    Connect,
    /// List one kind of item; the decision says which items the page may show.
    List(ItemKind),
    /// Use one item.
    Use { verb: Verb, item: Item<'a> },
}

/// Which items of a list a caller may see (a list decision's view).
pub type View = Arc<dyn Fn(&Item<'_>) -> bool + Send + Sync>;

/// A policy's answer.
#[derive(Clone)]
pub enum Decision {
    Allow,
    /// Allowed with a view: only the items the view shows (for `ActionKind::List`).
    Only(View),
    /// Allowed once the member confirms this very call (a rule's `ask`); the reason names the
    /// rule, for the audit trail and logs.
    Ask(String),
    /// Refused; the reason is for the audit trail and logs, never for the caller.
    Deny(String),
    /// Refused for this very use (its arguments), of an item the caller is shown in lists: the
    /// caller may be told the call was refused (it is no secret that the item exists).
    Refuse(String),
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("Allow"),
            Decision::Only(_) => f.write_str("Only(..)"),
            Decision::Ask(r) => f.debug_tuple("Ask").field(r).finish(),
            Decision::Deny(r) => f.debug_tuple("Deny").field(r).finish(),
            Decision::Refuse(r) => f.debug_tuple("Refuse").field(r).finish(),
        }
    }
}

/// Decides what a principal may do. Implementations are pure: the same inputs give the same
/// answer, with no I/O, so an evaluation cannot fail at runtime (a rule that cannot be
/// evaluated denies).
pub trait Policy: Send + Sync {
    fn decide(&self, who: &Principal, action: &Action<'_>) -> Decision;
}

/// Everything is allowed: the gateway before roles and rules exist.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn decide(&self, _who: &Principal, _action: &Action<'_>) -> Decision {
        Decision::Allow
    }
}

/// What a permit can be for: something that describes itself as an action.
pub trait Target {
    fn action(&self) -> Action<'_>;
}

/// An allowed request: the only way to get one is `authorize`, and the router takes nothing
/// else, so code that skips the decision does not compile. It carries what was allowed (the
/// routed request itself, so a permit for one tool cannot be used for another), for whom, and
/// for lists the view that filters the page.
pub struct Permit<T> {
    who: Arc<Principal>,
    target: T,
    view: Option<View>,
    /// Why the member must confirm the request before it goes upstream, if they must.
    confirm: Option<String>,
}

/// A refused request, with the request back (to answer and audit it).
pub struct Denied<T> {
    pub target: T,
    pub reason: String,
    /// The caller is shown the item in lists (refused for this use only): the refusal may say
    /// so, instead of answering as if the item did not exist.
    pub visible: bool,
}

impl<T: fmt::Debug> fmt::Debug for Denied<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Denied")
            .field("target", &self.target)
            .field("reason", &self.reason)
            .finish()
    }
}

/// Decide `target` for `who`, whose request arrived `via`: the one consultation of `policy`
/// for a request.
pub fn authorize<T: Target>(
    policy: &dyn Policy,
    who: &Arc<Principal>,
    via: Via,
    target: T,
) -> Result<Permit<T>, Denied<T>> {
    let mut action = target.action();
    action.via = via;
    let decision = policy.decide(who, &action);
    match decision {
        Decision::Allow => Ok(Permit {
            who: who.clone(),
            target,
            view: None,
            confirm: None,
        }),
        Decision::Only(view) => Ok(Permit {
            who: who.clone(),
            target,
            view: Some(view),
            confirm: None,
        }),
        Decision::Ask(why) => Ok(Permit {
            who: who.clone(),
            target,
            view: None,
            confirm: Some(why),
        }),
        Decision::Deny(reason) => Err(Denied {
            target,
            reason,
            visible: false,
        }),
        Decision::Refuse(reason) => Err(Denied {
            target,
            reason,
            visible: true,
        }),
    }
}

impl<T> Permit<T> {
    pub fn target(&self) -> &T {
        &self.target
    }

    pub fn principal(&self) -> &Arc<Principal> {
        &self.who
    }

    /// Whether a list page built under this permit shows `item`.
    pub fn shows(&self, item: &Item<'_>) -> bool {
        self.view.as_ref().is_none_or(|v| v(item))
    }

    /// Why the member must confirm this request before it goes upstream (`None`: they need
    /// not). The pipeline asks them; a permit that asks is not usable without the answer.
    pub fn confirmation(&self) -> Option<&str> {
        self.confirm.as_deref()
    }

    /// Whether this permit filters items at all (a list under `Allow` shows everything, and
    /// the page can be cut from the catalog without looking at each item).
    pub fn filters(&self) -> bool {
        self.view.is_some()
    }
}

impl<T: fmt::Debug> fmt::Debug for Permit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("who", &self.who.id)
            .field("target", &self.target)
            .field("filtered", &self.view.is_some())
            .field("confirm", &self.confirm)
            .finish()
    }
}

/// `*` matches any run of characters, `?` one character; everything else is literal.
pub fn glob(pattern: &str, name: &str) -> bool {
    // Names are nearly always ASCII: match their bytes, allocating nothing (lists decide every
    // item with it).
    if pattern.is_ascii() && name.is_ascii() {
        return glob_in(pattern.as_bytes(), name.as_bytes(), b'*', b'?');
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    glob_in(&p, &n, '*', '?')
}

/// The matching of `glob` over any symbols.
fn glob_in<T: PartialEq + Copy>(p: &[T], n: &[T], any_run: T, any_one: T) -> bool {
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == any_one || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == any_run {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == any_run)
}

/// A policy for tests: items whose exposed name (or URI) matches one of the globs are hidden
/// from lists and refused to everyone; everything else is allowed. Lists and uses are decided
/// by the same match, as a real policy must.
#[derive(Clone, Debug, Default)]
pub struct DenyExposed(pub Vec<String>);

impl DenyExposed {
    fn denies(&self, exposed: &str) -> bool {
        self.0.iter().any(|g| glob(g, exposed))
    }
}

impl Policy for DenyExposed {
    fn decide(&self, _who: &Principal, action: &Action<'_>) -> Decision {
        match action.kind {
            ActionKind::Connect => Decision::Allow,
            ActionKind::List(_) => {
                let me = self.clone();
                Decision::Only(Arc::new(move |item| !me.denies(item.exposed)))
            }
            ActionKind::Use { item, .. } if self.denies(item.exposed) => {
                Decision::Deny(format!("{} matches a denied name", item.exposed))
            }
            ActionKind::Use { .. } => Decision::Allow,
        }
    }
}
