//! The real implementations of tributary's ports.
//!
//! | file | what it holds |
//! |---|---|
//! | `merge_sql.rs` | the portable SQL of one batch commit (stage, dedupe, fence, replace, tombstones) and `quote_ident` |
//! | `sqlite.rs` | `SqliteWarehouse`: the embedded warehouse of the demo |

pub mod merge_sql;
pub mod sqlite;
