//! The real implementations of tributary's ports.
//!
//! | file | what it holds |
//! |---|---|
//! | `lib.rs` | this table, and `error_chain` (an error and its sources in one line) |
//! | `aws.rs` | the SDK configuration (default credential chain, no SDK retries) and SDK error classification |
//! | `kinesis.rs` | `Kinesis`: the `ShardReader` port on Kinesis Data Streams, plus PutRecords and resharding |
//! | `kinesis_fan_out.rs` | `KinesisFanOut`: the `ShardReader` port over enhanced fan-out (a registered consumer, SubscribeToShard per shard) |
//! | `dynamodb_lease_table.rs` | `DynamoLeaseTable`: the `LeaseTable` port on DynamoDB, KCL's schema (every lease-table SDK call) |
//! | `kcl_lease_item.rs` | KCL's lease item: a lease as a DynamoDB row and back, plus tributary's leader and membership rows |
//! | `dynamodb_expr.rs` | `Expr`: the update and condition expressions of one conditional write |
//! | `lease_table_admin.rs` | the lease table's definition (key, owner index, billing) and the wait until it is active |
//! | `dynamodb_units.rs` | what lease-table rows weigh in DynamoDB and what a call on them costs in request units (the scale benchmark's) |
//! | `dynamodb_reference.rs` | `DynamoReferenceSource`: reference tables by Scan, followed through DynamoDB Streams |
//! | `sql_text.rs` | `quote_ident`, `sql_literal`, `values_text`: the one audited place where names and values enter SQL text |
//! | `dialect.rs` | `Dialect`: what differs between SQLite, PostgreSQL and Redshift SQL (column types, placeholders) |
//! | `warehouse_ddl.rs` | the target and tombstone tables: which schemas they serve, `create_tables` |
//! | `column_check.rs` | whether existing tables have the columns the sink writes (catalog check, Data API probes) |
//! | `merge_sql.rs` | `MergeSql`: the statements of one batch commit (stage, dedupe, fence, replace, tombstones; PostgreSQL's by ON CONFLICT), cached per table |
//! | `tombstone_prune.rs` | the pass that stamps tombstones by the warehouse's clock and removes those past the retention |
//! | `commit_plan.rs` | `CommitPlan`: the order of those statements and what each one's row count adds to, run by all three SQL warehouses |
//! | `copy_csv.rs` | a batch's stage rows as the gzip CSV file Redshift's COPY loads from S3, and that COPY statement |
//! | `s3_staging.rs` | `S3Staging`: the S3 prefix the Redshift COPY path stages its files under (PutObject, DeleteObject) |
//! | `sqlite.rs` | `SqliteWarehouse`: the embedded warehouse of the demo |
//! | `postgres.rs` | `PostgresWarehouse`: PostgreSQL over tokio-postgres |
//! | `redshift_data.rs` | `RedshiftDataWarehouse`: Amazon Redshift through the Data API (batches of literal SQL) |

pub mod aws;
pub mod column_check;
pub mod commit_plan;
pub mod copy_csv;
pub mod dialect;
pub mod dynamodb_expr;
pub mod dynamodb_lease_table;
pub mod dynamodb_reference;
pub mod dynamodb_units;
pub mod kcl_lease_item;
pub mod kinesis;
pub mod kinesis_fan_out;
pub mod lease_table_admin;
pub mod merge_sql;
pub mod postgres;
pub mod redshift_data;
pub mod s3_staging;
pub mod sql_text;
pub mod sqlite;
pub mod tombstone_prune;
pub mod warehouse_ddl;

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
