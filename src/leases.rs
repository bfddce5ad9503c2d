//! `tributary leases --config FILE`: the lease table as a table (owner, checkpoint, lag behind
//! the stream's tip, parents, children), and `--reset SHARD`: put a shard's checkpoint back to
//! the trim horizon and release it, after a confirmation.

use crate::run_config::RunConfig;
use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use anyhow::Context;
use proto::{Checkpoint, Expect, Lease, LeaseChange, LeaseTable, ShardReader, StartingPosition};
use std::io::{BufRead, Write};

fn short(checkpoint: &Checkpoint) -> String {
    match checkpoint {
        Checkpoint::At(p) => {
            let s = p.sequence.as_str();
            let tail = &s[s.len().saturating_sub(10)..];
            if p.sub_sequence > 0 {
                format!("…{tail}/{}", p.sub_sequence)
            } else {
                format!("…{tail}")
            }
        }
        other => other.as_attribute(),
    }
}

/// How far the lease's checkpoint is behind the shard's newest record (one GetRecords).
async fn lag(reader: &Kinesis, lease: &Lease) -> String {
    let from = match &lease.checkpoint {
        Checkpoint::ShardEnd => return "done".into(),
        Checkpoint::At(p) => StartingPosition::AfterSequence(p.sequence.clone()),
        Checkpoint::Latest => return "-".into(),
        _ => StartingPosition::TrimHorizon,
    };
    let Ok(iterator) = reader.iterator(&lease.shard_id(), &from).await else { return "?".into() };
    match reader.read(&lease.shard_id(), &iterator, 1).await {
        Ok(batch) if batch.records.is_empty() && batch.millis_behind_latest == 0 => "0s".into(),
        Ok(batch) => format!("{:.1}s", batch.millis_behind_latest as f64 / 1000.0),
        Err(_) => "?".into(),
    }
}

fn list(shards: &[proto::ShardId]) -> String {
    if shards.is_empty() {
        "-".into()
    } else {
        shards.iter().map(|s| s.as_str().trim_start_matches("shardId-")).collect::<Vec<_>>().join(",")
    }
}

pub async fn run(config: RunConfig, reset: Option<String>, yes: bool) -> anyhow::Result<()> {
    let sdk = adapters::aws::load_config().await;
    let table = DynamoLeaseTable::new(&sdk, &config.lease_table.name);
    let reader = Kinesis::new(&sdk, &config.stream.name);
    if let Some(shard) = reset {
        return reset_lease(&table, &shard, yes).await;
    }
    let mut leases = table.scan().await.with_context(|| format!("lease table {}", config.lease_table.name))?;
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    let workers = table.workers().await.unwrap_or_default();
    println!(
        "{:<22} {:<28} {:>8} {:<18} {:>8} {:<12} {:<12}",
        "shard", "owner", "counter", "checkpoint", "lag", "parents", "children"
    );
    for l in &leases {
        let owner = match (&l.owner, &l.checkpoint_owner) {
            (Some(o), Some(from)) => format!("{o} (from {from})"),
            (Some(o), None) => o.to_string(),
            (None, _) => "-".into(),
        };
        println!(
            "{:<22} {:<28} {:>8} {:<18} {:>8} {:<12} {:<12}",
            l.key,
            owner,
            l.counter,
            short(&l.checkpoint),
            lag(&reader, l).await,
            list(&l.parent_shard_ids),
            list(&l.child_shard_ids)
        );
    }
    println!("{} leases; {} nodes: {}", leases.len(), workers.len(), {
        let names: Vec<String> =
            workers.iter().map(|w| format!("{}{}", w.id, if w.draining { " (draining)" } else { "" })).collect();
        names.join(", ")
    });
    Ok(())
}

async fn reset_lease(table: &DynamoLeaseTable, shard: &str, yes: bool) -> anyhow::Result<()> {
    let lease = table.get(shard).await?.with_context(|| format!("no lease {shard:?} in {}", table.table_name()))?;
    println!(
        "lease {shard}: owner {}, checkpoint {}. Reset to TRIM_HORIZON and release it? Its records are read again.",
        lease.owner.as_ref().map_or("-".to_owned(), |o| o.to_string()),
        short(&lease.checkpoint)
    );
    if !yes {
        print!("type the shard id to confirm: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != shard {
            anyhow::bail!("not confirmed; nothing changed");
        }
    }
    let change = LeaseChange {
        owner: Some(None),
        checkpoint: Some(Checkpoint::TrimHorizon),
        checkpoint_owner: Some(None),
        ..LeaseChange::default()
    };
    table.update(shard, &Expect::unchanged(&lease), &change).await.context("the lease changed meanwhile; try again")?;
    println!("lease {shard} reset to TRIM_HORIZON and released");
    Ok(())
}
