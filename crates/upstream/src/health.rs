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
    #[serde(with = "unix_secs")]
    pub since: SystemTime,
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
            tools: 0,
            prompts: 0,
            resources: 0,
            resource_templates: 0,
        }
    }
}

mod unix_secs {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }
}
