//! What a connector offers right now (its catalog), read raw from the upstream so that fields
//! rmcp does not model reach clients too, and republished after every `list_changed`.

use std::sync::Arc;

use rmcp::{
    RoleClient,
    model::{Prompt, Resource, ResourceTemplate, ServerCapabilities, Tool},
    service::Peer,
};

use crate::{
    UpstreamEvent,
    connector::Shared,
    link::{self, Link},
};

/// What a connector offers right now. Empty while it is down, so its tools drop out of lists.
#[derive(Debug, Default, Clone)]
pub struct UpstreamCatalog {
    pub capabilities: Option<ServerCapabilities>,
    pub instructions: Option<String>,
    pub tools: Vec<Tool>,
    /// Each tool as the upstream sent it (same order as `tools`), unknown fields included.
    pub tools_json: Vec<Arc<JsonMap>>,
    pub prompts: Vec<Prompt>,
    pub prompts_json: Vec<Arc<JsonMap>>,
    pub resources: Vec<Resource>,
    pub resources_json: Vec<Arc<JsonMap>>,
    pub resource_templates: Vec<ResourceTemplate>,
    pub resource_templates_json: Vec<Arc<JsonMap>>,
}

/// A JSON object as an upstream sent it.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

impl Shared {
    pub(crate) fn publish_catalog(&self, cat: UpstreamCatalog) {
        {
            let mut h = self.health.lock().expect("health lock");
            h.tools = cat.tools.len();
            h.prompts = cat.prompts.len();
            h.resources = cat.resources.len();
            h.resource_templates = cat.resource_templates.len();
        }
        let cat = Arc::new(cat);
        // What a connection offered, kept while the connector is down (to say so by name).
        if cat.capabilities.is_some() {
            self.last_known.store(cat.clone());
        }
        self.catalog.store(cat);
        let _ = self
            .events
            .send(UpstreamEvent::CatalogChanged(self.spec.id.clone()));
    }

    /// Re-read every list and publish the result. Refreshes run one at a time (the async lock
    /// is held through publishing), so an older refresh never publishes after a newer one; a
    /// refresh of a connection that has since closed publishes nothing.
    pub(crate) async fn refresh_and_publish(
        &self,
        peer: &Peer<RoleClient>,
        link: &Arc<Link>,
    ) -> Result<(), String> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let cat = self.fetch_catalog(peer, link).await?;
        if peer.is_transport_closed() {
            return Err("the connection closed during the refresh".into());
        }
        self.publish_catalog(cat);
        Ok(())
    }

    /// Every list the upstream offers (all pages). Lists it lacks stay empty.
    async fn fetch_catalog(
        &self,
        peer: &Peer<RoleClient>,
        link: &Arc<Link>,
    ) -> Result<UpstreamCatalog, String> {
        let t = self.spec.call_timeout;
        let info = peer.peer_info();
        let caps = info
            .as_ref()
            .map(|i| i.capabilities.clone())
            .unwrap_or_default();
        // Lists are read raw, so fields rmcp does not model reach clients too.
        let (tools, tools_json) = if caps.tools.is_some() {
            link::list_all(link, "tools/list", "tools", t).await?
        } else {
            Default::default()
        };
        let (prompts, prompts_json) = if caps.prompts.is_some() {
            link::list_all(link, "prompts/list", "prompts", t).await?
        } else {
            Default::default()
        };
        let ((resources, resources_json), (resource_templates, resource_templates_json)) =
            if caps.resources.is_some() {
                (
                    link::list_all(link, "resources/list", "resources", t).await?,
                    // Optional for servers; one that lacks it has no templates.
                    link::list_all(link, "resources/templates/list", "resourceTemplates", t)
                        .await
                        .unwrap_or_default(),
                )
            } else {
                Default::default()
            };
        Ok(UpstreamCatalog {
            instructions: info.as_ref().and_then(|i| i.instructions.clone()),
            capabilities: Some(caps),
            tools,
            tools_json,
            prompts,
            prompts_json,
            resources,
            resources_json,
            resource_templates,
            resource_templates_json,
        })
    }

    /// Refresh after an upstream `list_changed`, keeping the rest of the catalog.
    pub(crate) async fn refresh_after_change(&self, peer: &Peer<RoleClient>, link: &Arc<Link>) {
        if let Err(e) = self.refresh_and_publish(peer, link).await {
            tracing::warn!(connector = %self.spec.id, error = %e, "refreshing the catalog after list_changed failed");
        }
    }

    /// The upstream resources clients watch.
    pub(crate) fn watched_uris(&self) -> Vec<String> {
        let watched = self.watched.lock().expect("watched lock");
        watched.iter().cloned().collect()
    }
}
