//! Connector health, as `/healthz` and the log show it.

use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not started yet (lazy connectors before first use).
    Idle,
    Starting,
    Up,
    /// Failed recently; restarting with backoff.
    Degraded,
    /// Circuit open after repeated failures; one trial start after a cool-down.
    Down,
}

impl HealthState {
    /// The state as `/healthz` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Idle => "idle",
            HealthState::Starting => "starting",
            HealthState::Up => "up",
            HealthState::Degraded => "degraded",
            HealthState::Down => "down",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub state: HealthState,
    pub last_error: Option<String>,
    pub restarts: u64,
    /// When the connector entered `state`, as RFC 3339 in UTC.
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    /// Whether the connector has been up at least once since the gateway started it.
    pub reached: bool,
    pub tools: usize,
    pub prompts: usize,
    pub resources: usize,
    pub resource_templates: usize,
}

impl Health {
    pub(crate) fn new() -> Self {
        Self {
            state: HealthState::Idle,
            last_error: None,
            restarts: 0,
            since: SystemTime::now(),
            reached: false,
            tools: 0,
            prompts: 0,
            resources: 0,
            resource_templates: 0,
        }
    }
}

impl Health {
    /// Has the connector's first start finished, whether it came up or failed? A load balancer
    /// waits for this (`/readyz`) rather than for every connector to be up.
    pub fn settled(&self) -> bool {
        self.reached
            || self.restarts > 0
            || matches!(self.state, HealthState::Degraded | HealthState::Down)
    }
}

mod rfc3339 {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let t: chrono::DateTime<chrono::Utc> = (*t).into();
        s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}
