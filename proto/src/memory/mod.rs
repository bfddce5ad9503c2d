//! In-memory implementations of the four ports, with the real services' semantics. They back
//! the demo and the simulation tests; the real services are tested through `adapters/`.

mod faults;
mod lease_table;
mod reference;
mod stream;
mod warehouse;

pub use faults::{FaultConfig, FaultyLeaseTable, FaultyReader, FaultyWarehouse};
pub use lease_table::{LeaseTableStats, MemoryLeaseTable};
pub use reference::MemoryReferenceSource;
pub use stream::{hash_key, MemoryStream, StreamError};
pub use warehouse::{MemoryWarehouse, StoredRow};
