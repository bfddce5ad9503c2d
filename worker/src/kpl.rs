//! KPL aggregated records: one Kinesis record carrying many user records.
//!
//! Layout: the 4 magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the 16-byte MD5
//! of the protobuf bytes. Each user record gets the Kinesis record's sequence number and its
//! index as sub-sequence number, so a checkpoint can stop inside an aggregate. A record without
//! the magic prefix is a plain record (sub-sequence 0). A record with the prefix whose body is
//! truncated or corrupt is reported as such (it goes to the dead letters).

use crate::record_mapper::UserRecord;
use md5::{Digest, Md5};
use prost::Message;
use proto::{KinesisRecord, Position};

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<AggregatedUserRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AggregatedUserRecord {
    #[prost(uint64, tag = "1")]
    pub partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Tag {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// Splits a Kinesis record into its user records.
pub fn deaggregate(record: &KinesisRecord) -> Vec<UserRecord> {
    let plain = |error: Option<String>| UserRecord {
        position: Position::new(record.sequence.clone(), 0),
        partition_key: record.partition_key.clone(),
        data: record.data.clone(),
        arrival_ms: record.arrival_ms,
        error,
    };
    let data = &record.data[..];
    if !data.starts_with(&MAGIC) {
        return vec![plain(None)];
    }
    let corrupt = |why: &str| vec![plain(Some(format!("kpl aggregate is truncated or corrupt: {why}")))];
    if data.len() < MAGIC.len() + DIGEST_LEN {
        return corrupt("shorter than its framing");
    }
    let (body, digest) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - DIGEST_LEN);
    if Md5::digest(body).as_slice() != digest {
        return corrupt("md5 mismatch");
    }
    let aggregate = match AggregatedRecord::decode(body) {
        Ok(a) => a,
        Err(e) => return corrupt(&e.to_string()),
    };
    let mut out = Vec::with_capacity(aggregate.records.len());
    for (i, r) in aggregate.records.into_iter().enumerate() {
        let Some(key) = aggregate.partition_key_table.get(r.partition_key_index as usize) else {
            return corrupt("partition key index out of range");
        };
        out.push(UserRecord {
            position: Position::new(record.sequence.clone(), i as u64),
            partition_key: key.clone(),
            data: r.data.into(),
            arrival_ms: record.arrival_ms,
            error: None,
        });
    }
    out
}

/// Builds an aggregate (what the KPL writes): for tests, benchmarks and the generator.
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<String> = Vec::new();
    let mut user = Vec::new();
    for (key, data) in records {
        let index = keys.iter().position(|k| k == key).unwrap_or_else(|| {
            keys.push((*key).to_owned());
            keys.len() - 1
        });
        user.push(AggregatedUserRecord {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: data.to_vec(),
            tags: Vec::new(),
        });
    }
    let body = AggregatedRecord { partition_key_table: keys, explicit_hash_key_table: Vec::new(), records: user }
        .encode_to_vec();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SequenceNumber;

    fn record(data: Vec<u8>) -> KinesisRecord {
        KinesisRecord {
            sequence: SequenceNumber::from_u128(77),
            partition_key: "outer".into(),
            data: data.into(),
            arrival_ms: 5,
        }
    }

    #[test]
    fn splits_an_aggregate_with_sub_sequence_numbers() {
        let agg = aggregate(&[("a", b"one"), ("b", b"two"), ("a", b"three")]);
        let users = deaggregate(&record(agg));
        assert_eq!(users.len(), 3);
        assert_eq!(users[2].position, Position::new(SequenceNumber::from_u128(77), 2));
        assert_eq!((users[1].partition_key.as_str(), &users[1].data[..]), ("b", &b"two"[..]));
        assert!(users.iter().all(|u| u.error.is_none()));
    }

    /// The framing alone (magic, an empty body, its MD5) is a valid aggregate of no records, as
    /// the KPL's format allows: nothing to map, nothing to dead-letter. One byte less is corrupt.
    #[test]
    fn an_aggregate_of_no_records_yields_none() {
        let empty = aggregate(&[]);
        assert_eq!(empty.len(), MAGIC.len() + DIGEST_LEN);
        assert!(deaggregate(&record(empty.clone())).is_empty());
        let short = deaggregate(&record(empty[..empty.len() - 1].to_vec()));
        assert!(short[0].error.as_deref().is_some_and(|e| e.contains("shorter than its framing")), "{short:?}");
    }

    #[test]
    fn plain_records_pass_through() {
        let users = deaggregate(&record(b"{\"x\":1}".to_vec()));
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].position.sub_sequence, 0);
        assert_eq!(users[0].partition_key, "outer");
    }

    #[test]
    fn truncated_or_corrupt_aggregates_are_reported() {
        let agg = aggregate(&[("a", b"one"), ("b", b"two")]);
        for bad in [agg[..agg.len() - 3].to_vec(), agg[..10].to_vec(), {
            let mut b = agg.clone();
            b[8] ^= 0xff;
            b
        }] {
            let users = deaggregate(&record(bad.clone()));
            assert_eq!(users.len(), 1);
            let why = users[0].error.as_deref().expect("reported");
            assert!(why.starts_with("kpl aggregate is truncated or corrupt"), "{why}");
            assert_eq!(&users[0].data[..], &bad[..], "the whole record is kept for the dead letters");
        }
    }
}
