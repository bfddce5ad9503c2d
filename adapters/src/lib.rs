//! The real implementations of tributary's ports.
//!
//! | file | what it holds |
//! |---|---|
//! | `merge_sql.rs` | the portable SQL of one batch commit (stage, dedupe, fence, replace, tombstones) and `quote_ident` |
//! | `sqlite.rs` | `SqliteWarehouse`: the embedded warehouse of the demo |
//! | `postgres.rs` | `PostgresWarehouse`: PostgreSQL over tokio-postgres |
//! | `postgres_server.rs` | a throwaway PostgreSQL on 127.0.0.1 for tests and local runs |

pub mod merge_sql;
pub mod postgres;
pub mod postgres_server;
pub mod sqlite;
