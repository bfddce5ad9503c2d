//! In-memory implementations of the four ports, with the real services' semantics. They back
//! the demo and the simulation tests (faults around them: `testkit`); the real services are
//! tested through `adapters/`.

mod lease_table;
mod reference;
mod stream;
mod warehouse;

pub use lease_table::{LeaseTableStats, MemoryLeaseTable};
pub use reference::MemoryReferenceSource;
pub use stream::{hash_key, MemoryStream, StreamError};
pub use warehouse::{MemoryWarehouse, StoredRow};
