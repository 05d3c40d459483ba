//! Confirmation of sensitive calls: a role's `ask` rule lets a member call a tool only once they
//! confirm that very call. The gateway asks through elicitation (form mode) before anything goes
//! upstream: a server→client request on a legacy session, an `input_required` round for a
//! 2026-07-28 client. The question shows the tool, its connector and the arguments that would
//! go upstream. Only an `accept` confirms; a decline, a cancel, no answer within
//! `gateway.input_wait`, or a client that cannot be asked refuses the call, and the audit event
//! of the request says which.

use manifold_audit::Confirmation;
use manifold_policy::{ActionKind, Target};
use manifold_router::Routed;
use rmcp::model::{ClientCapabilities, ErrorCode, ErrorData};
use serde_json::{Value, json};

/// The key of the gateway's own question in a 2026-07-28 round's `inputRequests`.
pub(crate) const INPUT_KEY: &str = "manifold_confirm";

/// Arguments longer than this (as JSON text) are cut in the question.
const SHOWN_ARGUMENTS: usize = 2_000;

/// The `elicitation/create` params that ask the member to confirm `routed`.
pub(crate) fn question(routed: &Routed) -> Value {
    let ActionKind::Use { item, .. } = routed.action().kind else {
        unreachable!("a routed request is the use of an item")
    };
    let mut args = item
        .arguments
        .map(|a| serde_json::to_string_pretty(a).expect("arguments serialise"))
        .unwrap_or_else(|| "(none)".to_owned());
    if args.len() > SHOWN_ARGUMENTS {
        let mut cut = SHOWN_ARGUMENTS;
        while !args.is_char_boundary(cut) {
            cut -= 1;
        }
        args.truncate(cut);
        args.push_str("\n… (cut; the call sends all of it)");
    }
    json!({
        "mode": "form",
        "message": format!(
            "Confirm this call before Manifold sends it.\n\nTool: {}\nConnector: {} (its tool {:?})\nArguments:\n{args}\n\nAccept to run it; decline to refuse it.",
            item.exposed, item.connector, item.name
        ),
        "requestedSchema": {
            "type": "object",
            "properties": {
                "confirm": {
                    "type": "boolean",
                    "title": "Run this call",
                    "default": true
                }
            }
        }
    })
}

/// Whether the client can be asked at all.
pub(crate) fn askable(caps: &ClientCapabilities) -> bool {
    caps.elicitation.is_some()
}

/// The refusal for a client that cannot be asked.
pub(crate) fn unsupported(routed: &Routed) -> ErrorData {
    ErrorData::new(
        ErrorCode::INVALID_REQUEST,
        format!(
            "tool {:?} needs your confirmation for each call, and this client cannot ask you (it does not support elicitation): use a client that does, or ask an administrator to change the rule",
            routed.exposed
        ),
        Some(json!({ "confirmation": "unsupported" })),
    )
}

/// What the member's answer (an `elicitation/create` result) says.
pub(crate) fn answer_of(v: &Value) -> Confirmation {
    match v.get("action").and_then(Value::as_str) {
        Some("accept") => {
            let unticked = v
                .get("content")
                .and_then(|c| c.get("confirm"))
                .is_some_and(|c| c == &Value::Bool(false));
            if unticked {
                Confirmation::Declined
            } else {
                Confirmation::Confirmed
            }
        }
        Some("decline") => Confirmation::Declined,
        Some("cancel") => Confirmation::Cancelled,
        _ => Confirmation::Failed,
    }
}

/// The refusal of a call the member did not confirm (`how`: anything but `Confirmed`).
pub(crate) fn refused(routed: &Routed, how: Confirmation, detail: Option<&str>) -> ErrorData {
    let why = match how {
        Confirmation::Declined => "you declined it".to_owned(),
        Confirmation::Cancelled => "you cancelled the confirmation".to_owned(),
        Confirmation::TimedOut => {
            "no confirmation arrived in time; call again to be asked again".to_owned()
        }
        Confirmation::Unsupported => return unsupported(routed),
        Confirmation::Failed | Confirmation::Asked | Confirmation::Confirmed => format!(
            "the confirmation failed{}",
            detail.map(|d| format!(": {d}")).unwrap_or_default()
        ),
    };
    ErrorData::new(
        ErrorCode::INVALID_REQUEST,
        format!("the call of {:?} was not run: {why}", routed.exposed),
        Some(json!({ "confirmation": how.as_str() })),
    )
}

/// The confirmation outcome an error carries (set by `refused` and `unsupported`).
pub(crate) fn of_error(e: &ErrorData) -> Option<Confirmation> {
    let c = e.data.as_ref()?.get("confirmation")?.as_str()?;
    Confirmation::parse(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accept_confirms() {
        assert_eq!(
            answer_of(&json!({"action": "accept"})),
            Confirmation::Confirmed
        );
        assert_eq!(
            answer_of(&json!({"action": "accept", "content": {"confirm": true}})),
            Confirmation::Confirmed
        );
        assert_eq!(
            answer_of(&json!({"action": "accept", "content": {"confirm": false}})),
            Confirmation::Declined
        );
        assert_eq!(
            answer_of(&json!({"action": "decline"})),
            Confirmation::Declined
        );
        assert_eq!(
            answer_of(&json!({"action": "cancel"})),
            Confirmation::Cancelled
        );
        assert_eq!(answer_of(&json!({"action": "yes"})), Confirmation::Failed);
        assert_eq!(answer_of(&json!({})), Confirmation::Failed);
        assert_eq!(answer_of(&json!("accept")), Confirmation::Failed);
    }

    #[test]
    fn a_refusal_carries_its_outcome_for_the_audit() {
        for how in [
            Confirmation::Declined,
            Confirmation::Cancelled,
            Confirmation::TimedOut,
            Confirmation::Failed,
        ] {
            let e = ErrorData::new(
                ErrorCode::INVALID_REQUEST,
                "x",
                Some(json!({ "confirmation": how.as_str() })),
            );
            assert_eq!(of_error(&e), Some(how));
        }
        assert_eq!(of_error(&ErrorData::invalid_request("x", None)), None);
    }
}
