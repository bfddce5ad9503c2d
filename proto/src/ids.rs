//! Identifiers: shards, workers (nodes) and lease keys.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A Kinesis shard id, e.g. `shardId-000000000004`.
    ShardId
);
string_id!(
    /// A node of the cluster (a pod, a process): the value written to `leaseOwner`.
    WorkerId
);

impl ShardId {
    /// The shard id Kinesis gives the `n`-th shard of a stream.
    pub fn numbered(n: u64) -> Self {
        Self(format!("shardId-{n:012}"))
    }
}
