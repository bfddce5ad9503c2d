//! `tributary check --config FILE`: validates a node's configuration without connecting to
//! anything (no AWS, no warehouse) and describes what the node would run. The same parser and
//! validation as `tributary run`, so a file that passes here fails `run` only on what needs the
//! services (credentials, a stream or table that does not exist, a warehouse that refuses).

use crate::run_config::{PostgresSection, RunConfig, SqliteSection, WarehouseSection};
use adapters::redshift_data::Target;
use std::fmt::Write;

fn duration(d: std::time::Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// What a node with `config` runs, a few lines for a person; nothing secret is in a valid
/// config, and the warehouse shows only where it is.
pub fn summary(config: &RunConfig) -> String {
    let mut out = String::new();
    let start_text = |position: &proto::Checkpoint, at: Option<i64>| match (position, at) {
        (proto::Checkpoint::Latest, _) => "latest".to_owned(),
        (proto::Checkpoint::AtTimestamp, Some(ms)) => {
            let mut at = String::from("at_timestamp ");
            proto::civil::push_datetime_ms(ms, &mut at);
            at + " UTC"
        }
        _ => "trim_horizon".to_owned(),
    };
    for stream in &config.streams {
        let start = match &stream.start {
            Some((position, at)) => start_text(position, *at),
            None => start_text(&config.cluster.initial_position, config.consumer.initial_timestamp),
        };
        let reading = match stream.consumer_name(&config.lease_table.name) {
            None => "polling (GetRecords)".to_owned(),
            Some(name) => format!("enhanced fan-out (stream consumer {name})"),
        };
        let _ = writeln!(out, "stream       {} (start at {start} without a checkpoint)", stream.section.name);
        let _ = writeln!(out, "reading      by {reading}");
    }
    if config.multi_stream {
        let _ = writeln!(out, "leases       keyed account:stream:creation-time:shard (KCL's multi-stream keys)");
    }
    let _ = writeln!(out, "lease table  {} (DynamoDB)", config.lease_table.name);
    let warehouse = match &config.warehouse {
        WarehouseSection::Postgres(PostgresSection { url }) => {
            let pg: Result<adapters::postgres::PostgresConfig, _> = url.parse();
            let hosts = pg
                .map(|pg| {
                    let hosts: Vec<String> = pg
                        .get_hosts()
                        .iter()
                        .map(|h| match h {
                            adapters::postgres::Host::Tcp(name) => name.clone(),
                            adapters::postgres::Host::Unix(path) => path.display().to_string(),
                        })
                        .collect();
                    format!("{} database {}", hosts.join(","), pg.get_dbname().unwrap_or("(default)"))
                })
                .unwrap_or_default();
            format!("postgresql at {hosts}")
        }
        WarehouseSection::Sqlite(SqliteSection { url }) => format!("sqlite file {url}"),
        WarehouseSection::Redshift(w) => {
            let target = match &w.target {
                Target::Cluster { identifier } => format!("cluster {identifier}"),
                Target::Workgroup { name } => format!("workgroup {name}"),
            };
            let auth = if w.secret_arn.is_some() { "secret" } else { "temporary credentials" };
            format!("redshift data api, {target} database {} ({auth}; lock_tables {})", w.database, w.lock_tables)
        }
    };
    let _ = writeln!(out, "warehouse    {warehouse}");
    for stream in &config.streams {
        let p = &stream.pipeline;
        let of = if config.multi_stream { format!(" (stream {})", stream.section.name) } else { String::new() };
        let _ = writeln!(out, "format       {}{of}", format!("{:?}", p.format).to_lowercase());
        for t in &p.tables {
            let source = t.source_table.as_deref().map(|s| format!(", from source table {s}")).unwrap_or_default();
            let joins: Vec<&str> = t.joins.iter().map(|j| j.reference.as_str()).collect();
            let joins = if joins.is_empty() { String::new() } else { format!(", joins {}", joins.join(", ")) };
            let _ = writeln!(
                out,
                "table        {} (key {}; {} columns{source}{joins}){of}",
                t.name,
                t.key.join(", "),
                t.columns.len()
            );
        }
    }
    let p = &config.stream().pipeline;
    let _ = writeln!(out, "table        {} (records that cannot be mapped)", worker::DEAD_LETTER_TABLE);
    for r in &p.references {
        let _ = writeln!(
            out,
            "reference    {} (DynamoDB table {}, key {}, reloaded every {} unless it has a stream, at most {} items)",
            r.name,
            r.table.as_deref().unwrap_or(&r.name),
            r.key,
            duration(r.refresh_interval),
            r.max_items
        );
    }
    if config.streams.iter().any(|s| s.pipeline.tokenizes()) {
        let set = if std::env::var_os(&p.tokenize_key_env).is_some() { "set" } else { "not set here" };
        let _ = writeln!(out, "tokenize key from ${} ({set}; `run` needs it)", p.tokenize_key_env);
    }
    match &config.metrics {
        Some(m) => {
            let _ = writeln!(out, "metrics      http://{}/metrics, /healthz, /readyz", m.listen);
        }
        None => {
            let _ = writeln!(out, "metrics      off (no [metrics] listen)");
        }
    }
    let _ = writeln!(
        out,
        "node         failover {}, shutdown deadline {}, batches commit at {} rows, {} bytes or {}",
        duration(config.cluster.failover_time),
        duration(config.node.shutdown_deadline),
        config.sink.batch_rows,
        config.sink.batch_bytes,
        duration(config.sink.batch_latency)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_what_the_node_would_run_and_no_secret() {
        let text = format!(
            "{}\n[stream]\nname = \"ev\"\n[lease_table]\nname = \"ev-leases\"\n[warehouse]\nkind = \"postgres\"\n\
             url = \"host=db.internal user=etl dbname=analytics\"\n[metrics]\nlisten = \"0.0.0.0:9898\"\n",
            testkit::ev::PIPELINE
        );
        let config = RunConfig::from_toml(&text).unwrap();
        let s = summary(&config);
        for want in [
            "stream       ev (start at trim_horizon",
            "lease table  ev-leases",
            "postgresql at db.internal database analytics",
            "table        ev_charging_sessions (key",
            "table        tributary_dead_letters",
            "http://0.0.0.0:9898/metrics",
            "failover 10s, shutdown deadline 30s, batches commit at 5000 rows, 8388608 bytes or 500ms",
        ] {
            assert!(s.contains(want), "{want:?} missing from:\n{s}");
        }
        assert!(!s.contains("etl"), "the user is not shown:\n{s}");
        assert!(s.contains("reading      by polling (GetRecords)"), "{s}");

        let text = text.replace("name = \"ev\"\n", "name = \"ev\"\nconsumer = \"efo\"\n").replace(
            "[stream]",
            "[node]\ninitial_position = \"at_timestamp\"\ninitial_timestamp = \"2026-11-30T08:00:00Z\"\n[stream]",
        );
        let s = summary(&RunConfig::from_toml(&text).unwrap());
        assert!(s.contains("(start at at_timestamp 2026-11-30 08:00:00.000 UTC without"), "{s}");
        assert!(s.contains("reading      by enhanced fan-out (stream consumer ev-leases)"), "{s}");
    }
}
