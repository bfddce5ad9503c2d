//! What the cluster tests share: the test tables and their mapping.

use worker::{Pipeline, PipelineConfig};

/// `sim_latest` (key → last value) and `sim_raw` (every record by shard and sequence number).
pub fn mapper() -> Pipeline {
    let config = PipelineConfig::from_toml(
        r#"
        [[table]]
        name = "sim_latest"
        key = ["key"]
        column = [
            { name = "key", from = "key", type = "text" },
            { name = "value", from = "value", type = "bigint" },
        ]

        [[table]]
        name = "sim_raw"
        key = ["shard_id", "sequence_number"]
        column = [
            { name = "shard_id", from = "@shard_id", type = "text" },
            { name = "sequence_number", from = "@sequence_number", type = "text" },
            { name = "payload", from = "@payload", type = "text" },
        ]
        "#,
    )
    .expect("valid test pipeline");
    Pipeline::without_references(&config).expect("no references to load")
}
