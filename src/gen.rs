//! `tributary gen`: writes test data into a Kinesis stream at a steady rate, like the Kinesis
//! Data Generator. Presets: `ev` (EV charging sessions, JSON; several records per session as it
//! progresses) and `tickets` (AWS DMS change records of `ticket_activity`: a full load, then
//! inserts, updates and deletes; with `--reference-tables` the dimension tables `sport_event`,
//! `ticket` and `customer` are written to DynamoDB first, with streams, for the joins).
//! With `--template FILE` each record is the file's text with its `{{…}}` placeholders drawn
//! afresh (see `template.rs`), the partition key from `--partition-key` (a template too; a
//! random UUID by default).
//! Records go out in PutRecords calls of up to 500; refused records are sent again.

use crate::template::Template;
use adapters::kinesis::Kinesis;
use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value as Json;
use std::io::Write;
use std::time::Duration;
use testkit::tickets::TicketWorld;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    Ev,
    Tickets,
}

pub struct GenOptions {
    pub stream: String,
    pub preset: Preset,
    pub rate: u32,
    pub duration: Duration,
    pub seed: u64,
    /// Create the stream with this many shards first.
    pub create_shards: Option<u32>,
    pub reference_tables: bool,
    /// Records from this template instead of the preset, and their partition keys.
    pub template: Option<(Template, Template)>,
}

fn dynamo_value(v: &Json) -> AttributeValue {
    match v {
        Json::String(s) => AttributeValue::S(s.clone()),
        Json::Number(n) => AttributeValue::N(n.to_string()),
        Json::Bool(b) => AttributeValue::Bool(*b),
        Json::Null => AttributeValue::Null(true),
        Json::Array(a) => AttributeValue::L(a.iter().map(dynamo_value).collect()),
        Json::Object(o) => AttributeValue::M(o.iter().map(|(k, v)| (k.clone(), dynamo_value(v))).collect()),
    }
}

/// Writes the ticket world's dimension tables to DynamoDB (created with streams if absent).
pub async fn write_reference_tables(sdk: &aws_config::SdkConfig, world: &TicketWorld) -> anyhow::Result<()> {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    for (table, key, rows) in [
        ("sport_event", "event_id", &world.events),
        ("ticket", "ticket_id", &world.tickets),
        ("customer", "customer_id", &world.customers),
    ] {
        create_reference_table(&client, table, key, ScalarAttributeType::N, true).await?;
        for row in rows.values() {
            put_reference_item(&client, table, row).await?;
        }
        eprintln!("gen: {} rows in {table}", rows.len());
    }
    Ok(())
}

/// Creates a reference table keyed by `key` (on-demand; with a NEW_IMAGE stream when
/// `stream`) unless it exists, and waits until it takes writes.
pub async fn create_reference_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    key_type: ScalarAttributeType,
    stream: bool,
) -> anyhow::Result<()> {
    let mut create = client
        .create_table()
        .table_name(table)
        .attribute_definitions(AttributeDefinition::builder().attribute_name(key).attribute_type(key_type).build()?)
        .key_schema(KeySchemaElement::builder().attribute_name(key).key_type(KeyType::Hash).build()?)
        .billing_mode(BillingMode::PayPerRequest);
    if stream {
        create = create.stream_specification(
            StreamSpecification::builder().stream_enabled(true).stream_view_type(StreamViewType::NewImage).build()?,
        );
    }
    if let Err(e) = create.send().await {
        let f = adapters::aws::classify(&e);
        anyhow::ensure!(f.code() == "ResourceInUseException", "create table {table}: {f}");
    }
    wait_active(client, table).await
}

/// Writes one item (a JSON object) into a reference table.
pub async fn put_reference_item(client: &aws_sdk_dynamodb::Client, table: &str, row: &Json) -> anyhow::Result<()> {
    let item = row.as_object().context("rows are objects")?.iter().map(|(k, v)| (k.clone(), dynamo_value(v)));
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item.collect()))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("put into {table}: {}", adapters::aws::classify(&e)))?;
    Ok(())
}

/// A new table takes writes only once ACTIVE (DynamoDB answers ResourceNotFound before).
async fn wait_active(client: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("describe table {table}: {}", adapters::aws::classify(&e)))?;
        if out.table().and_then(|t| t.table_status()) == Some(&aws_sdk_dynamodb::types::TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("table {table} not active after a minute")
}

/// Sends records, resending refused ones (bounded), and returns how many went out.
pub async fn send(kinesis: &Kinesis, mut batch: Vec<(String, Vec<u8>)>) -> anyhow::Result<usize> {
    let total = batch.len();
    for attempt in 0..20u32 {
        if batch.is_empty() {
            return Ok(total);
        }
        let refused = kinesis.put_records(&batch).await.map_err(|e| anyhow::anyhow!("put records: {e}"))?;
        batch = adapters::kinesis::refused_only(batch, &refused);
        if !batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
    }
    anyhow::bail!("{} records still refused after 20 attempts", batch.len())
}

pub async fn run(mut opts: GenOptions) -> anyhow::Result<()> {
    let sdk = adapters::aws::load_config().await;
    let kinesis = Kinesis::new(&sdk, &opts.stream);
    if let Some(shards) = opts.create_shards {
        kinesis.create_stream(shards).await.map_err(|e| anyhow::anyhow!("create stream {}: {e}", opts.stream))?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let now_ms = proto::clock::system_ms();
    let mut ev = testkit::ev::Generator::new(now_ms);
    let mut tickets = TicketWorld::new(&mut rng, 20, 50, 500, now_ms);
    let mut backlog: Vec<(String, Vec<u8>)> = Vec::new();
    if opts.preset == Preset::Tickets && opts.template.is_none() {
        if opts.reference_tables {
            write_reference_tables(&sdk, &tickets).await?;
        }
        backlog = tickets.full_load(&mut rng);
        backlog.reverse();
    }
    let start = Instant::now();
    let (mut sent, mut last_report) = (0usize, Instant::now());
    let tick = Duration::from_millis(100);
    let per_tick = (f64::from(opts.rate) * tick.as_secs_f64()).max(1.0);
    let mut owed = 0.0;
    let mut ticker = tokio::time::interval(tick);
    while start.elapsed() < opts.duration {
        ticker.tick().await;
        owed += per_tick;
        let n = owed.floor() as usize;
        owed -= n as f64;
        let clock_ms = proto::clock::system_ms();
        let batch: Vec<(String, Vec<u8>)> = (0..n)
            .map(|_| match (&mut opts.template, opts.preset) {
                (Some((record, key)), _) => {
                    (key.render(&mut rng, clock_ms), record.render(&mut rng, clock_ms).into_bytes())
                }
                (None, Preset::Ev) => {
                    let (key, data, _) = ev.next(&mut rng);
                    (key, data)
                }
                (None, Preset::Tickets) => backlog.pop().unwrap_or_else(|| tickets.change(&mut rng)),
            })
            .collect();
        if let Some((key, _)) = batch.iter().find(|(key, _)| key.is_empty() || key.chars().count() > 256) {
            anyhow::bail!("--partition-key rendered {:?}: Kinesis takes 1 to 256 characters", key);
        }
        for chunk in batch.chunks(500) {
            sent += send(&kinesis, chunk.to_vec()).await?;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let secs = start.elapsed().as_secs_f64();
            let done = (secs / opts.duration.as_secs_f64()).min(1.0);
            let bar = "#".repeat((done * 30.0) as usize);
            eprint!("\rgen: [{bar:<30}] {sent} records, {:.0}/s", sent as f64 / secs);
            let _ = std::io::stderr().flush();
            last_report = Instant::now();
        }
    }
    eprintln!("\rgen: {sent} records to {} in {:.1}s{:30}", opts.stream, start.elapsed().as_secs_f64(), "");
    Ok(())
}
