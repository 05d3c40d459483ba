//! A 2026-07-28 upstream's `subscriptions/listen` stream: the connector's own, for its list
//! changes and the resources clients watch.

use std::{sync::Arc, time::Duration};

use rmcp::{RoleClient, service::Peer};
use tokio_util::sync::CancellationToken;

use crate::{UpstreamEvent, connector::Shared, link::Link};

/// A modern upstream's `subscriptions/listen` stream for its list changes and the resources
/// clients watch; reopened whenever the watched set changes, ended with the connection.
pub(crate) async fn listen_upstream(
    shared: std::sync::Weak<Shared>,
    peer: Peer<RoleClient>,
    link: Arc<Link>,
    ct: CancellationToken,
) {
    use rmcp::model::ServerNotification as N;
    let mut failures = 0u32;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let uris = s.watched_uris();
        let caps = s.catalog.load().capabilities.clone().unwrap_or_default();
        let mut filter = rmcp::model::SubscriptionFilter::new();
        filter.tools_list_changed = caps.tools.is_some().then_some(true);
        filter.prompts_list_changed = caps.prompts.is_some().then_some(true);
        filter.resources_list_changed = caps.resources.is_some().then_some(true);
        if !uris.is_empty() {
            filter.resource_subscriptions = Some(uris);
        }
        let id = s.spec.id.clone();
        drop(s);
        let opened = tokio::select! {
            r = peer.listen(filter) => r,
            _ = ct.cancelled() => return,
        };
        let mut sub = match opened {
            Ok(sub) => {
                if failures > 0 {
                    tracing::info!(connector = %id, "subscriptions/listen to the upstream works again");
                }
                failures = 0;
                sub
            }
            // The connection is ending (a restart or shutdown): nothing to report.
            Err(_)
                if ct.is_cancelled()
                    || shared.upgrade().is_none_or(|s| s.shutdown.is_cancelled()) =>
            {
                return;
            }
            // The upstream does not offer the stream (some 2026-07-28 servers do not): say so
            // once and do not ask this connection again.
            Err(rmcp::service::ServiceError::McpError(e))
                if e.code == rmcp::model::ErrorCode::METHOD_NOT_FOUND =>
            {
                tracing::info!(connector = %id, "the upstream does not offer subscriptions/listen: its list changes and resource updates are not seen until it restarts");
                return;
            }
            Err(e) => {
                failures += 1;
                // One warning per run of failures; the retries after it are debug lines.
                if failures == 1 {
                    tracing::warn!(connector = %id, error = %e, "subscriptions/listen to the upstream failed; list changes and resource updates of this connector will be missed until it works (retrying)");
                } else {
                    tracing::debug!(connector = %id, error = %e, failures, "subscriptions/listen to the upstream failed again");
                }
                let wait = Duration::from_secs(u64::from(failures.min(6)) * 5);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = ct.cancelled() => return,
                }
            }
        };
        let Some(s) = shared.upgrade() else { return };
        loop {
            let changed = s.watched_changed.notified();
            tokio::select! {
                n = sub.next() => match n {
                    Ok(Some(N::ToolListChangedNotification(_)))
                    | Ok(Some(N::PromptListChangedNotification(_)))
                    | Ok(Some(N::ResourceListChangedNotification(_))) => {
                        let (s, peer, link) = (s.clone(), peer.clone(), link.clone());
                        tokio::spawn(async move { s.refresh_after_change(&peer, &link).await });
                    }
                    Ok(Some(N::ResourceUpdatedNotification(u))) => {
                        let _ = s.events.send(UpstreamEvent::ResourceUpdated(
                            s.spec.id.clone(),
                            u.params.uri,
                        ));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                _ = changed => break,
                _ = ct.cancelled() => return,
            }
        }
    }
}
