//! Audit events: one record per MCP request the gateway answers, built from the request's
//! permit (or its refusal) and its outcome, handed to an `AuditSink`. The sink is the seam a
//! durable, hash-chained writer will plug into; today's default writes each event to the log.

use std::time::{Duration, SystemTime};

use manifold_policy::{ActionKind, Denied, Item, Permit, PrincipalId, Target};

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Outcome {
    /// Answered with a result.
    Ok,
    /// Answered with an error: its JSON-RPC code and whose fault it was.
    Error { code: i32, fault: Fault },
}

/// Whose fault a failed request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The request was wrong (unknown name, bad params, refused by policy).
    Client,
    /// The connector failed, timed out or answered with an error.
    Upstream,
    /// The gateway could not serve it (shutting down, overloaded).
    Gateway,
}

/// What became of the member's confirmation of a call that needs one (a role's `ask`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirmation {
    /// Asked (a 2026-07-28 round: the answer comes with the client's retry).
    Asked,
    /// The member accepted: the call went upstream.
    Confirmed,
    /// The member declined.
    Declined,
    /// The member cancelled the question.
    Cancelled,
    /// No answer within `gateway.input_wait`.
    TimedOut,
    /// The client cannot be asked (it does not support elicitation).
    Unsupported,
    /// The client's answer was not an answer (an error, or not an elicitation result).
    Failed,
}

impl Confirmation {
    pub fn as_str(self) -> &'static str {
        match self {
            Confirmation::Asked => "asked",
            Confirmation::Confirmed => "confirmed",
            Confirmation::Declined => "declined",
            Confirmation::Cancelled => "cancelled",
            Confirmation::TimedOut => "timed_out",
            Confirmation::Unsupported => "unsupported",
            Confirmation::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "asked" => Confirmation::Asked,
            "confirmed" => Confirmation::Confirmed,
            "declined" => Confirmation::Declined,
            "cancelled" => Confirmation::Cancelled,
            "timed_out" => Confirmation::TimedOut,
            "unsupported" => Confirmation::Unsupported,
            "failed" => Confirmation::Failed,
            _ => return None,
        })
    }
}

/// The item a request was about.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Subject {
    pub connector: String,
    /// The upstream's name (or URI).
    pub name: String,
    /// The name (or URI) the client used.
    pub exposed: String,
}

/// One audit record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditEvent {
    #[serde(with = "unix_millis")]
    pub at: SystemTime,
    pub principal: String,
    pub server: String,
    /// The MCP method (`tools/call`, `tools/list`, …).
    pub method: String,
    pub subject: Option<Subject>,
    /// `None` when allowed; the policy's reason when refused.
    pub denied: Option<String>,
    /// For a call that needs the member's confirmation: what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<Confirmation>,
    pub outcome: Outcome,
    #[serde(with = "micros")]
    pub duration: Duration,
}

impl AuditEvent {
    /// The record of an allowed request, from its permit and how it ended.
    pub fn allowed<T: Target>(
        permit: &Permit<T>,
        method: &str,
        outcome: Outcome,
        started: SystemTime,
    ) -> Self {
        let action = permit.target().action();
        Self {
            at: started,
            principal: principal(permit.principal().id()),
            server: action.server.to_owned(),
            method: method.to_owned(),
            subject: subject(&action.kind),
            denied: None,
            confirmation: None,
            outcome,
            duration: started.elapsed().unwrap_or_default(),
        }
    }

    /// The record of a request the policy refused (answered as if the item did not exist).
    pub fn denied<T: Target>(
        denied: &Denied<T>,
        who: &PrincipalId,
        method: &str,
        code: i32,
        started: SystemTime,
    ) -> Self {
        let action = denied.target.action();
        Self {
            at: started,
            principal: principal(who),
            server: action.server.to_owned(),
            method: method.to_owned(),
            subject: subject(&action.kind),
            denied: Some(denied.reason.clone()),
            confirmation: None,
            outcome: Outcome::Error {
                code,
                fault: Fault::Client,
            },
            duration: started.elapsed().unwrap_or_default(),
        }
    }

    /// The record of a request that failed before any decision (malformed, unknown name).
    pub fn failed(
        who: &PrincipalId,
        server: &str,
        method: &str,
        outcome: Outcome,
        started: SystemTime,
    ) -> Self {
        Self {
            at: started,
            principal: principal(who),
            server: server.to_owned(),
            method: method.to_owned(),
            subject: None,
            denied: None,
            confirmation: None,
            outcome,
            duration: started.elapsed().unwrap_or_default(),
        }
    }
}

fn principal(id: &PrincipalId) -> String {
    id.to_string()
}

fn subject(kind: &ActionKind<'_>) -> Option<Subject> {
    match kind {
        ActionKind::Use { item, .. } => Some(of(item)),
        ActionKind::Connect | ActionKind::List(_) => None,
    }
}

fn of(item: &Item<'_>) -> Subject {
    Subject {
        connector: item.connector.to_owned(),
        name: item.name.to_owned(),
        exposed: item.exposed.to_owned(),
    }
}

/// Where audit events go. `record` must not block: a durable sink queues and group-commits.
pub trait AuditSink: Send + Sync {
    fn record(&self, event: AuditEvent);
}

/// The default sink: each event is a `debug` line of the `manifold::audit` log target
/// (`MANIFOLD_LOG=info,manifold::audit=debug` shows them).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn record(&self, e: AuditEvent) {
        tracing::debug!(
            target: "manifold::audit",
            principal = %e.principal,
            server = %e.server,
            method = %e.method,
            connector = e.subject.as_ref().map(|s| s.connector.as_str()),
            name = e.subject.as_ref().map(|s| s.exposed.as_str()),
            denied = e.denied.as_deref(),
            confirmation = e.confirmation.map(Confirmation::as_str),
            outcome = ?e.outcome,
            micros = e.duration.as_micros() as u64,
            "request"
        );
    }
}

mod unix_millis {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        s.serialize_u64(ms)
    }
}

mod micros {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use manifold_policy::{
        Action, AllowAll, DenyExposed, ItemKind, Principal, Verb, Via, authorize,
    };

    use super::*;

    #[derive(Debug)]
    struct Call(&'static str);

    impl Target for Call {
        fn action(&self) -> Action<'_> {
            Action {
                via: Default::default(),
                server: "main",
                kind: ActionKind::Use {
                    verb: Verb::Call,
                    item: Item {
                        kind: ItemKind::Tool,
                        connector: "fa",
                        name: "echo",
                        exposed: self.0,
                        arguments: None,
                    },
                },
            }
        }
    }

    #[test]
    fn events_name_who_what_and_how_it_ended() {
        let who = Arc::new(Principal::user("https://idp", "7", vec![], vec![]));
        let permit = authorize(&AllowAll, &who, Via::default(), Call("fa__echo")).unwrap();
        let e = AuditEvent::allowed(&permit, "tools/call", Outcome::Ok, SystemTime::now());
        assert_eq!(e.principal, "7@https://idp");
        assert_eq!(e.server, "main");
        let s = e.subject.as_ref().unwrap();
        assert_eq!((s.connector.as_str(), s.name.as_str()), ("fa", "echo"));
        assert_eq!(e.denied, None);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["outcome"], serde_json::json!({"result": "ok"}));

        let d = authorize(
            &DenyExposed(vec!["fa__*".into()]),
            &who,
            Via::default(),
            Call("fa__echo"),
        )
        .unwrap_err();
        let e = AuditEvent::denied(&d, who.id(), "tools/call", -32602, SystemTime::now());
        assert!(e.denied.as_deref().unwrap().contains("fa__echo"));
        assert_eq!(
            e.outcome,
            Outcome::Error {
                code: -32602,
                fault: Fault::Client
            }
        );
    }
}
