//! Checkpoints: a position in a shard or one of KCL's sentinels.

use crate::sequence::{Position, SequenceNumber};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// What a lease's `checkpoint` (+ `checkpointSubSequenceNumber`) attribute says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Checkpoint {
    /// Start from the oldest record still in the shard.
    TrimHorizon,
    /// Start from records written after the iterator is taken.
    Latest,
    /// Start from the configured timestamp.
    AtTimestamp,
    /// Everything up to and including this position is done; resume after it.
    At(Position),
    /// The shard is closed and every record of it is done.
    ShardEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid checkpoint {0:?}")]
pub struct InvalidCheckpoint(pub String);

impl Checkpoint {
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    pub const LATEST: &'static str = "LATEST";
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    pub const SHARD_END: &'static str = "SHARD_END";

    /// The `checkpoint` attribute's text.
    pub fn as_attribute(&self) -> String {
        match self {
            Checkpoint::TrimHorizon => Self::TRIM_HORIZON.to_owned(),
            Checkpoint::Latest => Self::LATEST.to_owned(),
            Checkpoint::AtTimestamp => Self::AT_TIMESTAMP.to_owned(),
            Checkpoint::At(p) => p.sequence.as_str().to_owned(),
            Checkpoint::ShardEnd => Self::SHARD_END.to_owned(),
        }
    }

    /// The `checkpointSubSequenceNumber` attribute.
    pub fn sub_sequence(&self) -> u64 {
        match self {
            Checkpoint::At(p) => p.sub_sequence,
            _ => 0,
        }
    }

    /// Reads the two attributes back.
    pub fn from_attributes(text: &str, sub_sequence: u64) -> Result<Self, InvalidCheckpoint> {
        Ok(match text {
            Self::TRIM_HORIZON => Checkpoint::TrimHorizon,
            Self::LATEST => Checkpoint::Latest,
            Self::AT_TIMESTAMP => Checkpoint::AtTimestamp,
            Self::SHARD_END => Checkpoint::ShardEnd,
            digits => Checkpoint::At(Position::new(
                SequenceNumber::parse(digits).map_err(|_| InvalidCheckpoint(text.to_owned()))?,
                sub_sequence,
            )),
        })
    }

    pub fn is_shard_end(&self) -> bool {
        matches!(self, Checkpoint::ShardEnd)
    }

    fn rank(&self) -> u8 {
        match self {
            Checkpoint::TrimHorizon | Checkpoint::Latest | Checkpoint::AtTimestamp => 0,
            Checkpoint::At(_) => 1,
            Checkpoint::ShardEnd => 2,
        }
    }

    /// Progress order: sentinels that start a shard < positions < SHARD_END. Two different
    /// starting sentinels are not comparable.
    pub fn progress_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Checkpoint::At(a), Checkpoint::At(b)) => Some(a.cmp(b)),
            (a, b) if a.rank() == 0 && b.rank() == 0 => (a == b).then_some(Ordering::Equal),
            (a, b) => Some(a.rank().cmp(&b.rank())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        for cp in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp,
            Checkpoint::ShardEnd,
            Checkpoint::At(Position::new(SequenceNumber::parse("4959").unwrap(), 3)),
        ] {
            let back = Checkpoint::from_attributes(&cp.as_attribute(), cp.sub_sequence()).unwrap();
            assert_eq!(back, cp);
        }
        assert!(Checkpoint::from_attributes("SHARD_ENDX", 0).is_err());
    }

    #[test]
    fn progress_order() {
        let p = |s: &str, sub| Checkpoint::At(Position::new(SequenceNumber::parse(s).unwrap(), sub));
        assert_eq!(Checkpoint::TrimHorizon.progress_cmp(&p("1", 0)), Some(Ordering::Less));
        assert_eq!(p("10", 0).progress_cmp(&p("9", 5)), Some(Ordering::Greater));
        assert_eq!(p("9", 1).progress_cmp(&p("9", 2)), Some(Ordering::Less));
        assert_eq!(Checkpoint::ShardEnd.progress_cmp(&p("99", 0)), Some(Ordering::Greater));
        assert_eq!(Checkpoint::TrimHorizon.progress_cmp(&Checkpoint::Latest), None);
    }

    #[test]
    fn only_shard_end_is_shard_end() {
        assert!(Checkpoint::ShardEnd.is_shard_end());
        for cp in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp,
            Checkpoint::At(Position::new(SequenceNumber::parse("4959").unwrap(), 0)),
        ] {
            assert!(!cp.is_shard_end(), "{cp:?}");
        }
    }
}
