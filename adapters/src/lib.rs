//! The real implementations of tributary's ports.
//!
//! | file | what it holds |
//! |---|---|
//! | `aws.rs` | the SDK configuration (default credential chain, no SDK retries) and SDK error classification |
//! | `kinesis.rs` | `Kinesis`: the `ShardReader` port on Kinesis Data Streams, plus PutRecords and resharding |
//! | `dynamodb_lease_table.rs` | `DynamoLeaseTable`: the `LeaseTable` port on DynamoDB, KCL's schema |
//! | `dynamodb_reference.rs` | `DynamoReferenceSource`: reference tables by Scan, followed through DynamoDB Streams |
//! | `merge_sql.rs` | the portable SQL of one batch commit (stage, dedupe, fence, replace, tombstones) and `quote_ident` |
//! | `sqlite.rs` | `SqliteWarehouse`: the embedded warehouse of the demo |
//! | `postgres.rs` | `PostgresWarehouse`: PostgreSQL over tokio-postgres |
//! | `redshift_data.rs` | `RedshiftDataWarehouse`: Amazon Redshift through the Data API (batches of literal SQL) |

pub mod aws;
pub mod dynamodb_lease_table;
pub mod dynamodb_reference;
pub mod kinesis;
pub mod merge_sql;
pub mod postgres;
pub mod redshift_data;
pub mod sqlite;

/// An error and its sources in one line (`error performing tls handshake: invalid peer
/// certificate: UnknownIssuer`): what the adapters report when a call fails below the service.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
