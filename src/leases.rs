//! `tributary leases --config FILE`: the lease table as a table (owner, checkpoint, lag behind
//! the stream's tip, parents, children) and the nodes, each alive or silent by whether its
//! heartbeat moved over one heartbeat interval; `--reset SHARD`: put a shard's checkpoint back to
//! the trim horizon and release it; `--forget-stream ID`: delete the leases of a stream the
//! config no longer lists (nodes leave them alone otherwise); each after a confirmation.

use crate::run_config::RunConfig;
use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use anyhow::Context;
use proto::{Checkpoint, Expect, Lease, LeaseChange, LeaseTable, ShardReader, StartingPosition, WorkerRow};
use std::io::{BufRead, Write};

/// A checkpoint as the lease table holds it: the whole sequence number (a reset or a comparison
/// with another tool needs every digit), `/sub-sequence` inside a KPL aggregate.
fn checkpoint_text(checkpoint: &Checkpoint) -> String {
    match checkpoint {
        Checkpoint::At(p) if p.sub_sequence > 0 => format!("{}/{}", p.sequence, p.sub_sequence),
        Checkpoint::At(p) => p.sequence.to_string(),
        other => other.as_attribute(),
    }
}

/// The nodes of two reads of the membership one heartbeat interval apart: alive when its
/// counter moved (or it joined between the reads), silent when not; gone ones are left out.
fn nodes(before: &[WorkerRow], after: &[WorkerRow]) -> Vec<String> {
    after
        .iter()
        .map(|w| {
            let moved = before.iter().find(|b| b.id == w.id).is_none_or(|b| b.counter != w.counter);
            let state = match (moved, w.draining) {
                (false, _) => "silent: dead, or stalled",
                (true, true) => "alive, draining",
                (true, false) => "alive",
            };
            format!("{} ({state})", w.id)
        })
        .collect()
}

/// How far the lease's checkpoint is behind the shard's newest record (one GetRecords).
async fn lag(reader: &Kinesis, lease: &Lease) -> String {
    let from = match &lease.checkpoint {
        Checkpoint::ShardEnd => return "done".into(),
        Checkpoint::At(p) => StartingPosition::AfterSequence(p.sequence.clone()),
        Checkpoint::Latest => return "-".into(),
        _ => StartingPosition::TrimHorizon,
    };
    let shard = lease.stream_shard_id();
    let Ok(iterator) = reader.iterator(&shard, &from).await else { return "?".into() };
    match reader.read(&shard, &iterator, 1).await {
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

/// What `tributary leases` does besides listing.
pub enum LeasesAction {
    List,
    Reset(String),
    ForgetStream(String),
}

pub async fn run(config: RunConfig, action: LeasesAction, yes: bool) -> anyhow::Result<()> {
    let sdk = adapters::aws::load_config().await;
    let table = DynamoLeaseTable::new(&sdk, &config.lease_table.name);
    // Each configured stream's reader, by the stream part of its leases' keys.
    let mut readers: Vec<(Option<String>, Kinesis)> = Vec::new();
    for stream in &config.streams {
        let kinesis = Kinesis::new(&sdk, &stream.section.name);
        let id = match config.multi_stream {
            true => Some(kinesis.stream_identifier().await.with_context(|| format!("stream {}", stream.section.name))?),
            false => None,
        };
        readers.push((id, kinesis));
    }
    match action {
        LeasesAction::List => {}
        LeasesAction::Reset(shard) => return reset_lease(&table, &shard, yes).await,
        LeasesAction::ForgetStream(id) => {
            if readers.iter().any(|(known, _)| known.as_deref() == Some(id.as_str())) {
                anyhow::bail!(
                    "stream {id} is in the config: its nodes own its leases; remove it from the config first"
                );
            }
            return forget_stream(&table, &id, yes).await;
        }
    }
    let started = tokio::time::Instant::now();
    let mut leases: Vec<Lease> =
        table.scan().await.with_context(|| format!("lease table {}", config.lease_table.name))?;
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    let before = table.membership(true).await.unwrap_or_default().workers;
    println!(
        "{:<22} {:<28} {:>8} {:<58} {:>8} {:<12} {:<12}",
        "shard", "owner", "counter", "checkpoint", "lag", "parents", "children"
    );
    for l in &leases {
        let owner = match (&l.owner, &l.checkpoint_owner) {
            (Some(o), Some(from)) => format!("{o} (from {from})"),
            (Some(o), None) => o.to_string(),
            (None, _) => "-".into(),
        };
        println!(
            "{:<22} {:<28} {:>8} {:<58} {:>8} {:<12} {:<12}",
            l.key,
            owner,
            l.counter,
            checkpoint_text(&l.checkpoint),
            match readers.iter().find(|(id, _)| id.as_deref() == l.stream()) {
                Some((_, reader)) => lag(reader, l).await,
                None => "?".into(),
            },
            list(&l.parent_shard_ids),
            list(&l.child_shard_ids)
        );
    }
    // A node is alive if its heartbeat counter moves: look again after one heartbeat interval.
    let heartbeat = config.cluster.heartbeat_interval + std::time::Duration::from_millis(500);
    if !before.is_empty() {
        tokio::time::sleep(heartbeat.saturating_sub(started.elapsed())).await;
    }
    let after = table.membership(true).await.unwrap_or_default();
    let nodes = nodes(&before, &after.workers);
    let leader = after.leader.map_or_else(|| "none".to_owned(), |l| l.to_string());
    println!("{} leases; {} nodes: {}; leader {leader}", leases.len(), nodes.len(), nodes.join(", "));
    Ok(())
}

/// Asks for `what` to be typed back; anything else changes nothing.
fn confirm(what: &str, expected: &str) -> anyhow::Result<()> {
    print!("type the {what} to confirm: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    anyhow::ensure!(answer.trim() == expected, "not confirmed; nothing changed");
    Ok(())
}

/// Deletes every lease of the stream `id` (`account:stream:creationEpoch`), after the stream id
/// is typed back. Nothing reads them any more; their checkpoints are lost.
async fn forget_stream(table: &DynamoLeaseTable, id: &str, yes: bool) -> anyhow::Result<()> {
    let leases: Vec<Lease> = table.scan().await?.into_iter().filter(|l| l.stream() == Some(id)).collect();
    anyhow::ensure!(!leases.is_empty(), "no lease of stream {id:?} in {}", table.table_name());
    println!("{} leases of stream {id}. Delete them with their checkpoints?", leases.len());
    if !yes {
        confirm("stream id", id)?;
    }
    for lease in &leases {
        table.delete(&lease.key, &Expect::unchanged(lease)).await.with_context(|| format!("lease {}", lease.key))?;
    }
    println!("{} leases of stream {id} deleted", leases.len());
    Ok(())
}

async fn reset_lease(table: &DynamoLeaseTable, shard: &str, yes: bool) -> anyhow::Result<()> {
    let lease = table.get(shard).await?.with_context(|| format!("no lease {shard:?} in {}", table.table_name()))?;
    println!(
        "lease {shard}: owner {}, checkpoint {}. Reset to TRIM_HORIZON and release it? Its records are read again.",
        lease.owner.as_ref().map_or("-".to_owned(), |o| o.to_string()),
        checkpoint_text(&lease.checkpoint)
    );
    if !yes {
        confirm("shard id", shard)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Position, SequenceNumber, WorkerId};

    #[test]
    fn checkpoints_keep_every_digit() {
        let seq = "49590338271490256608559692538361571095921575989136588898";
        let at = |sub| Checkpoint::At(Position::new(SequenceNumber::parse(seq).unwrap(), sub));
        assert_eq!(checkpoint_text(&at(0)), seq);
        assert_eq!(checkpoint_text(&at(3)), format!("{seq}/3"));
        assert_eq!(checkpoint_text(&Checkpoint::ShardEnd), "SHARD_END");
    }

    #[test]
    fn a_node_whose_heartbeat_did_not_move_is_silent() {
        let row = |id: &str, counter, draining| WorkerRow { id: WorkerId::new(id), counter, draining };
        let before = [row("a", 5, false), row("dead", 9, false), row("gone", 1, false), row("b", 2, true)];
        let after = [row("a", 6, false), row("dead", 9, false), row("b", 3, true), row("new", 1, false)];
        assert_eq!(
            nodes(&before, &after),
            ["a (alive)", "dead (silent: dead, or stalled)", "b (alive, draining)", "new (alive)"]
        );
    }
}
