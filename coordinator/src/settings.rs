//! Timing of the lease protocol, shared by the coordinator and the workers. Defaults follow
//! KCL's where KCL has one (failover 10 s). Two of them are keys of node.toml's `[node]`:
//! `failover_time` and `initial_position`.

use proto::{duration, Checkpoint};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// A node (the leader too) whose heartbeat counter did not move for this long is dead.
    pub failover_time: Duration,
    /// How often a node writes its heartbeat (the leader's also renews its leadership).
    pub heartbeat_interval: Duration,
    /// How often every node reads the membership row, and the leader assigns.
    pub assign_interval: Duration,
    /// How often a node may look for leases assigned to it (it does when the change counter
    /// moved, while a lease of its own waits, and every `failover_time`).
    pub poll_interval: Duration,
    /// How often the leader lists the stream's shards (children are also created at shard end).
    pub shard_sync_interval: Duration,
    /// Where a new lease without parents starts.
    pub initial_position: Checkpoint,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self::with_failover(Duration::from_secs(10))
    }
}

impl ClusterSettings {
    pub fn with_failover(failover_time: Duration) -> Self {
        Self {
            failover_time,
            heartbeat_interval: failover_time / 3,
            assign_interval: Duration::from_millis(500),
            poll_interval: Duration::from_millis(500),
            shard_sync_interval: Duration::from_secs(10),
            initial_position: Checkpoint::TrimHorizon,
        }
    }
}

/// The keys of `[node]` that set the cluster: `failover_time` (`"10s"`) and `initial_position`
/// (`"trim_horizon"`, `"latest"` or `"at_timestamp"`, whose time is the consumers'
/// `initial_timestamp`). Not a derive: the heartbeat follows `failover_time` (a third
/// of it), so the settings are made by `with_failover`; a key not written keeps its `Default`.
impl<'de> Deserialize<'de> for ClusterSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum InitialPosition {
            TrimHorizon,
            Latest,
            AtTimestamp,
        }
        #[derive(Default, Deserialize)]
        #[serde(rename = "ClusterSettings", deny_unknown_fields, default)]
        struct Keys {
            #[serde(deserialize_with = "duration::some")]
            failover_time: Option<Duration>,
            initial_position: Option<InitialPosition>,
        }
        let keys = Keys::deserialize(d)?;
        let mut settings = keys.failover_time.map_or_else(Self::default, Self::with_failover);
        match keys.initial_position {
            Some(InitialPosition::TrimHorizon) => settings.initial_position = Checkpoint::TrimHorizon,
            Some(InitialPosition::Latest) => settings.initial_position = Checkpoint::Latest,
            Some(InitialPosition::AtTimestamp) => settings.initial_position = Checkpoint::AtTimestamp,
            None => {}
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Result<ClusterSettings, String> {
        toml::from_str(toml).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn failover_time_sets_the_heartbeat_and_missing_keys_keep_the_defaults() {
        assert_eq!(settings("").unwrap(), ClusterSettings::default());
        let s = settings("failover_time = \"4s\"\ninitial_position = \"latest\"").unwrap();
        assert_eq!(
            s,
            ClusterSettings {
                initial_position: Checkpoint::Latest,
                ..ClusterSettings::with_failover(Duration::from_secs(4))
            }
        );
        assert_eq!(s.heartbeat_interval, Duration::from_secs(4) / 3);
        let e = settings("initial_position = \"oldest\"").unwrap_err();
        assert!(
            e.contains("unknown variant `oldest`, expected one of `trim_horizon`, `latest`, `at_timestamp`"),
            "{e}"
        );
        let e = settings("heartbeat_interval = \"1s\"").unwrap_err();
        assert!(
            e.contains("unknown field `heartbeat_interval`, expected `failover_time` or `initial_position`"),
            "{e}"
        );
    }
}
