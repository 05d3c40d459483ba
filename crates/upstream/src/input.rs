//! A 2026-07-28 upstream's `input_required` result: its input requests go to the caller's client
//! (as requests of a legacy session, or as the caller's own next MRTR round), all at once so a
//! bridge can offer them in one round; their answers come back by the upstream's keys.

use rmcp::model::ErrorData;

use crate::{Ask, AskKind, Caller, UpstreamError};

/// Rounds of `input_required` a request may take before the gateway gives up.
pub(crate) const MAX_INPUT_ROUNDS: usize = 10;

/// Put the upstream's input requests (key → `{method, params}`) to the caller's client; their
/// answers by key.
pub(crate) async fn answer_inputs(
    caller: &Caller,
    requests: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, UpstreamError> {
    let Some(client) = caller.client_side() else {
        return Err(UpstreamError::BadResult(
            "the upstream asked for client input, but this request has no client to ask".into(),
        ));
    };
    let answers = futures::future::join_all(
        requests
            .into_iter()
            .map(|(key, req)| async move { (key.clone(), answer_input(client, key, req).await) }),
    )
    .await;
    let mut out = serde_json::Map::new();
    for (key, answer) in answers {
        out.insert(key, answer?);
    }
    Ok(out)
}

/// One input request, put to `client` under the upstream's `key`; its answer.
async fn answer_input(
    client: &dyn crate::Downstream,
    key: String,
    req: serde_json::Value,
) -> Result<serde_json::Value, UpstreamError> {
    let method = req
        .get("method")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    let Some(kind) = AskKind::of(method) else {
        return Err(UpstreamError::BadResult(format!(
            "the upstream asked for an unsupported input {method:?}"
        )));
    };
    let params = req.get("params").cloned().unwrap_or_default();
    if let Some(caps) = client.capabilities()
        && !kind.declared_by(&caps)
    {
        // A client without roots has none; anything else it cannot answer is refused.
        if kind == AskKind::Roots {
            return Ok(serde_json::json!({ "roots": [] }));
        }
        return Err(UpstreamError::Protocol(ErrorData::invalid_request(
            format!("the client did not declare the capability {method} needs"),
            None,
        )));
    }
    client
        .ask(Ask {
            kind,
            params,
            key: Some(key),
        })
        .await
        .map_err(UpstreamError::Protocol)
}
