//! EV charging sessions (the shape of public charging-station session data): the generator
//! that writes them to a stream, the tables they land in, and the oracle of what was written.

use proto::{SequenceNumber, ShardId};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use worker::{Pipeline, PipelineConfig};

pub const SESSIONS_TABLE: &str = "ev_charging_sessions";
pub const RAW_TABLE: &str = "ev_charging_sessions_raw";

const TIMEZONES: [&str; 3] = ["America/Los_Angeles", "America/Denver", "America/New_York"];

/// One session as the generator last wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub cluster_id: String,
    pub connection_time: String,
    pub kwh_delivered: f64,
    pub station_id: String,
    pub space_id: String,
    pub timezone: String,
    pub user_id: Option<String>,
}

impl Session {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "_id": self.id,
            "clusterID": self.cluster_id,
            "connectionTime": self.connection_time,
            "kWhDelivered": self.kwh_delivered,
            "stationID": self.station_id,
            "spaceID": self.space_id,
            "timezone": self.timezone,
            "userID": self.user_id,
        })
        .to_string()
    }
}

/// What the generator wrote: the oracle the warehouse is checked against.
#[derive(Default)]
pub struct Oracle {
    /// Every well-formed record, by sequence number.
    pub records: BTreeMap<SequenceNumber, ShardId>,
    /// Every malformed record (must land in the dead-letter table).
    pub malformed: BTreeSet<SequenceNumber>,
    /// Each session's last written state.
    pub sessions: BTreeMap<String, Session>,
}

impl Oracle {
    pub fn produced(&self) -> usize {
        self.records.len() + self.malformed.len()
    }
}

/// Makes new sessions, updates of recent ones (their energy grows), and now and then a
/// malformed record.
pub struct Generator {
    open: Vec<Session>,
    made: u64,
    base_ms: i64,
}

impl Generator {
    pub fn new(base_ms: i64) -> Self {
        Self { open: Vec::new(), made: 0, base_ms }
    }

    /// The next record: (partition key, payload, the session it carries if well formed).
    pub fn next(&mut self, rng: &mut impl Rng) -> (String, Vec<u8>, Option<Session>) {
        if rng.gen_bool(0.005) {
            let key = format!("broken-{}", rng.gen::<u32>());
            return (key, br#"{"_id": "truncated", "kWhDelivered": 3."#.to_vec(), None);
        }
        if !self.open.is_empty() && rng.gen_bool(0.3) {
            let i = rng.gen_range(0..self.open.len());
            let s = &mut self.open[i];
            s.kwh_delivered = ((s.kwh_delivered + rng.gen_range(0.1..2.5)) * 1000.0).round() / 1000.0;
            let s = s.clone();
            if rng.gen_bool(0.2) {
                self.open.swap_remove(i);
            }
            return (s.id.clone(), s.to_json().into_bytes(), Some(s));
        }
        self.made += 1;
        let cluster = rng.gen_range(1..60);
        let started = self.base_ms / 1000 + self.made as i64 * 7;
        let s = Session {
            id: format!("{:08x}{:016x}", started as u32, rng.gen::<u64>()),
            cluster_id: cluster.to_string(),
            connection_time: rfc3339(started),
            kwh_delivered: (rng.gen_range(0.5..8.0) * 1000.0_f64).round() / 1000.0,
            station_id: format!("2-{cluster}-{}-{}", rng.gen_range(10..200), rng.gen_range(100..999)),
            space_id: format!("CA-{}", rng.gen_range(100..999)),
            timezone: TIMEZONES[rng.gen_range(0..TIMEZONES.len())].to_owned(),
            user_id: rng.gen_bool(0.8).then(|| format!("{:09}", rng.gen_range(1..20_000))),
        };
        self.open.push(s.clone());
        if self.open.len() > 500 {
            self.open.swap_remove(0);
        }
        (s.id.clone(), s.to_json().into_bytes(), Some(s))
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = proto::civil::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The latest state of each session, keyed by `_id`, and the raw landing of every record,
/// replay-safe on (shard, sequence number, sub-sequence).
pub const PIPELINE: &str = r#"
format = "json"

[[table]]
name = "ev_charging_sessions"
key = ["_id"]
column = [
    { name = "_id", from = "_id", type = "text" },
    { name = "clusterID", from = "clusterID", type = "text" },
    { name = "connectionTime", from = "connectionTime", type = "text" },
    { name = "kWhDelivered", from = "kWhDelivered", type = "double" },
    { name = "stationID", from = "stationID", type = "text" },
    { name = "spaceID", from = "spaceID", type = "text" },
    { name = "timezone", from = "timezone", type = "text" },
    { name = "userID", from = "userID", type = "text" },
]

[[table]]
name = "ev_charging_sessions_raw"
key = ["shard_id", "sequence_number", "sub_sequence"]
version = "sequence"
column = [
    { name = "shard_id", from = "@shard_id", type = "text" },
    { name = "sequence_number", from = "@sequence_number", type = "text" },
    { name = "sub_sequence", from = "@sub_sequence", type = "bigint" },
    { name = "partition_key", from = "@partition_key", type = "text" },
    { name = "approximate_arrival_timestamp", from = "@arrival_time", type = "timestamp" },
    { name = "payload", from = "@payload", type = "text" },
    { name = "kWhDelivered", from = "kWhDelivered", type = "double" },
]
"#;

pub fn mapper() -> Pipeline {
    let config = PipelineConfig::from_toml(PIPELINE).expect("the EV pipeline is valid");
    Pipeline::without_references(&config).expect("it joins nothing")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_524_654_484), "2018-04-25T11:08:04Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn sessions_grow_and_some_records_are_malformed() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut g = Generator::new(1_700_000_000_000);
        let mut seen: BTreeMap<String, f64> = BTreeMap::new();
        let mut malformed = 0;
        for _ in 0..5_000 {
            let (key, payload, session) = g.next(&mut rng);
            match session {
                Some(s) => {
                    assert_eq!(key, s.id);
                    let doc: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    assert_eq!(doc["_id"], s.id.as_str());
                    if let Some(before) = seen.insert(s.id.clone(), s.kwh_delivered) {
                        assert!(s.kwh_delivered > before);
                    }
                }
                None => {
                    malformed += 1;
                    assert!(serde_json::from_slice::<serde_json::Value>(&payload).is_err());
                }
            }
        }
        assert!(malformed > 0 && malformed < 100, "{malformed}");
        assert!(seen.len() < 5_000, "some records update earlier sessions");
    }
}
