//! The configuration of `tributary run`: one TOML file. The sections `[node]`, `[stream]`,
//! `[lease_table]` and `[warehouse]` say where the node runs against; everything else
//! (`format`, `tokenize_key_env`, `[[reference]]`, `[[table]]`) is the record pipeline.
//! Secrets never live here: AWS credentials come from the default provider chain, the
//! PostgreSQL password from `PGPASSWORD`, the tokenize key from the variable the pipeline names.
//!
//! The types are the settings the node runs with: `[node]` is read by `worker::NodeSettings`,
//! `coordinator::ClusterSettings`, `worker::ConsumerSettings` and `worker::SinkSettings` (each
//! field a key, each type's `Default` the defaults), `[warehouse]` by the tagged enum
//! `WarehouseSection`. An example and every key's default: README.md ("Running it on AWS"),
//! which `tests/config_examples.rs` holds to this parser. Loading is parsing (unknown keys,
//! wrong types and impossible combinations are refused there), then `validate` (values).

use adapters::redshift_data::{Load, Target};
use adapters::s3_staging::S3Prefix;
use coordinator::ClusterSettings;
use serde::Deserialize;
use std::time::Duration;
use worker::pipeline::config::ConfigError;
use worker::settings::{keys, ConsumerSettings, NodeSettings, SinkSettings};
use worker::PipelineConfig;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// The stream's name or ARN.
    pub name: String,
    /// How shards are read: `polling` (GetRecords, the default) or `efo` (enhanced fan-out).
    #[serde(default)]
    pub consumer: ConsumerKind,
    /// With `efo`: the stream consumer registered (or reused) on the stream. Default: the lease
    /// table's name, as KCL names it after the application.
    #[serde(default)]
    pub consumer_name: Option<String>,
}

/// How a node reads its shards.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerKind {
    /// GetRecords, 5 reads a second per shard shared by every reader of the stream.
    #[default]
    Polling,
    /// Enhanced fan-out: SubscribeToShard through a registered consumer, 2 MB/s per shard of its own.
    Efo,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaseTableSection {
    /// The DynamoDB table (a KCL application's table can be used as it is).
    pub name: String,
}

/// `[warehouse]`: `kind` names the warehouse, and only that kind's keys may follow.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WarehouseSection {
    Postgres(PostgresSection),
    Sqlite(SqliteSection),
    /// Amazon Redshift through the Data API.
    Redshift(RedshiftSection),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// A libpq-style connection string (or URL) without the password (`PGPASSWORD`).
    pub url: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqliteSection {
    /// The database file.
    pub url: String,
}

/// `workgroup` (Serverless) or `cluster`, `database`, and `secret_arn` (or, with a cluster,
/// `db_user`: temporary credentials), as the Data API takes them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "RedshiftKeys")]
pub struct RedshiftSection {
    /// `cluster` (a provisioned cluster's identifier) or `workgroup`: exactly one.
    pub target: Target,
    pub database: String,
    /// Credentials from Secrets Manager (the secret's ARN, not the secret)…
    pub secret_arn: Option<String>,
    /// …or temporary credentials of this database user (clusters).
    pub db_user: Option<String>,
    /// Lock a table while a batch merges into it (readers wait that long). Needed under
    /// SNAPSHOT isolation, the default: two nodes committing one new key would both insert it.
    /// `false` only for a database set to SERIALIZABLE.
    pub lock_tables: bool,
    /// How batches reach the stage: `load`, `s3_staging`, `copy_role` and `copy_min_rows`.
    pub load: Load,
}

/// `[warehouse] load` for Redshift.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LoadKey {
    /// By COPY from `s3_staging` for batches of `copy_min_rows` rows or more, when it is set;
    /// otherwise by statements.
    Auto,
    /// Every batch by COPY (`s3_staging` required).
    Copy,
    /// Every batch as literal INSERTs in the Data API's statements (no S3).
    Statements,
}

#[derive(Deserialize)]
#[serde(rename = "RedshiftSection", deny_unknown_fields)]
struct RedshiftKeys {
    cluster: Option<String>,
    workgroup: Option<String>,
    database: String,
    secret_arn: Option<String>,
    db_user: Option<String>,
    #[serde(default = "RedshiftSection::lock_tables_default")]
    lock_tables: bool,
    #[serde(default = "RedshiftSection::load_default")]
    load: LoadKey,
    s3_staging: Option<String>,
    copy_role: Option<String>,
    copy_min_rows: Option<usize>,
}

impl RedshiftSection {
    const fn lock_tables_default() -> bool {
        true
    }

    const fn load_default() -> LoadKey {
        LoadKey::Auto
    }

    /// With `load = "auto"`, the smallest batch loaded by COPY: below it, the fixed cost of a
    /// file in S3 and a COPY outweighs sending the rows as statements (a Data API call takes
    /// about 8,000 rows of 300 bytes that way).
    pub const COPY_MIN_ROWS_DEFAULT: usize = 1_000;
}

/// `copy_role`: `default` (the cluster's or workgroup's default IAM role) or IAM role ARNs, one
/// or a chain separated by commas, as COPY's `IAM_ROLE` takes them.
fn copy_role(role: &str) -> Result<(), String> {
    if role == "default" {
        return Ok(());
    }
    let arn = |a: &str| {
        let parts: Vec<&str> = a.splitn(6, ':').collect();
        parts.len() == 6
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "iam"
            && parts[4].len() == 12
            && parts[4].bytes().all(|b| b.is_ascii_digit())
            && parts[5].strip_prefix("role/").is_some_and(|name| !name.is_empty())
    };
    if role.split(',').all(arn) {
        Ok(())
    } else {
        Err(format!("`copy_role`: {role:?} is neither \"default\" nor IAM role ARNs (arn:aws:iam::<account>:role/<name>, a chain separated by commas)"))
    }
}

/// `load` with the keys it reads; each refusal names its key.
fn load(k: &RedshiftKeys) -> Result<Load, String> {
    let named = |key: &str, why: &str| Err(format!("`{key}`: {why}"));
    let why = |key: &str, why: String| format!("`{key}`: {why}");
    match (k.load, &k.s3_staging) {
        (LoadKey::Statements, _) | (LoadKey::Auto, None) => {
            for (key, set) in [
                ("s3_staging", k.s3_staging.is_some()),
                ("copy_role", k.copy_role.is_some()),
                ("copy_min_rows", k.copy_min_rows.is_some()),
            ] {
                if set {
                    return named(
                        key,
                        "only read when batches load by COPY (load = \"auto\" with s3_staging, or \"copy\")",
                    );
                }
            }
            Ok(Load::Statements)
        }
        (LoadKey::Copy, None) => {
            named("s3_staging", "load = \"copy\" stages its files there: set it (s3://bucket/prefix/)")
        }
        (LoadKey::Copy | LoadKey::Auto, Some(url)) => {
            let staging = S3Prefix::parse(url).map_err(|e| why("s3_staging", e))?;
            let Some(role) = k.copy_role.clone() else {
                return named(
                    "copy_role",
                    "COPY reads the staged files as this role: set it (an IAM role ARN, or \"default\")",
                );
            };
            copy_role(&role)?;
            let min_rows = match (k.load, k.copy_min_rows) {
                (LoadKey::Copy, Some(_)) => {
                    return named("copy_min_rows", "only with load = \"auto\" (\"copy\" loads every batch by COPY)")
                }
                (LoadKey::Copy, None) => 1,
                (_, Some(0)) => return named("copy_min_rows", "must be at least 1"),
                (_, rows) => rows.unwrap_or(RedshiftSection::COPY_MIN_ROWS_DEFAULT),
            };
            Ok(Load::Copy { staging, role, min_rows })
        }
    }
}

/// The rules over several keys; each message names its key first (`parse` puts it in the path).
impl TryFrom<RedshiftKeys> for RedshiftSection {
    type Error = String;

    fn try_from(k: RedshiftKeys) -> Result<Self, Self::Error> {
        let load = load(&k)?;
        let target = match (k.cluster, k.workgroup) {
            (Some(identifier), None) => Target::Cluster { identifier },
            (None, Some(name)) => Target::Workgroup { name },
            _ => return Err("`cluster`: set exactly one of cluster and workgroup".into()),
        };
        let temporary = k.db_user.is_some() && matches!(target, Target::Cluster { .. });
        if k.secret_arn.is_none() && !temporary {
            return Err("`secret_arn`: set secret_arn, or db_user with a cluster (temporary credentials)".into());
        }
        let (database, secret_arn, db_user, lock_tables) = (k.database, k.secret_arn, k.db_user, k.lock_tables);
        Ok(Self { target, database, secret_arn, db_user, lock_tables, load })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where the node serves its Prometheus metrics (`GET /metrics`): `0.0.0.0:9898` in a pod,
    /// `127.0.0.1:9898` on a shared host.
    pub listen: std::net::SocketAddr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// `[node]`: one flat section whose keys are the fields of these four settings (`id` and
    /// `shutdown_deadline` here; `failover_time`, `initial_position` in `cluster`;
    /// `read_interval`, `idle_read_interval`, `checkpoint_interval` in `consumer`; `batch_rows`,
    /// `batch_bytes`, `batch_latency` in `sink`).
    pub node: NodeSettings,
    pub cluster: ClusterSettings,
    pub consumer: ConsumerSettings,
    pub sink: SinkSettings,
    /// `[stream]` (one stream, its pipeline at the top level, leases keyed by shard id) or the
    /// `[[stream]]` entries (each with its own pipeline; leases keyed as KCL's multi-stream ones).
    pub streams: Vec<StreamConfig>,
    /// Whether the streams came as `[[stream]]` (a multi-stream lease table).
    pub multi_stream: bool,
    pub lease_table: LeaseTableSection,
    pub warehouse: WarehouseSection,
    /// No Prometheus endpoint without it.
    pub metrics: Option<MetricsSection>,
}

/// One stream the node consumes.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamConfig {
    pub section: StreamSection,
    /// A `[[stream]]` entry's own `initial_position` (and `initial_timestamp`); `None`: `[node]`'s.
    pub start: Option<(proto::Checkpoint, Option<i64>)>,
    pub pipeline: PipelineConfig,
}

impl StreamConfig {
    /// With enhanced fan-out, the name of the stream consumer (by default the lease table's).
    pub fn consumer_name<'a>(&'a self, lease_table: &'a str) -> Option<&'a str> {
        match self.section.consumer {
            ConsumerKind::Polling => None,
            ConsumerKind::Efo => Some(self.section.consumer_name.as_deref().unwrap_or(lease_table)),
        }
    }
}

/// The pipeline keys a `[[stream]]` entry holds itself; `[[reference]]` and `tokenize_key_env`
/// stay at the top level, shared by every stream.
const STREAM_PIPELINE_KEYS: [&str; 4] = ["format", "max_record_bytes", "before_image_field", "table"];
const SHARED_PIPELINE_KEYS: [&str; 2] = ["reference", "tokenize_key_env"];

/// The `[[stream]]` entries: each one's own keys, its start, and its pipeline (its keys plus the
/// shared ones). Errors name the entry (`stream[1].table[0].key: …`).
fn stream_entries(entries: Vec<toml::Value>, shared: &toml::Table) -> Result<Vec<StreamConfig>, ConfigError> {
    if entries.is_empty() {
        return Err(ConfigError::new("stream", "at least one [[stream]] is needed"));
    }
    let mut streams = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let at = format!("stream[{i}]");
        let toml::Value::Table(mut keys) = entry else {
            return Err(ConfigError::new(at, "must be a table"));
        };
        let mut pipeline: toml::Table = shared.clone();
        for key in STREAM_PIPELINE_KEYS {
            if let Some(v) = keys.remove(key) {
                pipeline.insert(key.to_owned(), v);
            }
        }
        let mut start = toml::Table::new();
        for key in ["initial_position", "initial_timestamp"] {
            if let Some(v) = keys.remove(key) {
                start.insert(key.to_owned(), v);
            }
        }
        let section: StreamSection = parse(toml::Value::Table(keys), &at)?;
        let start = if start.is_empty() {
            None
        } else {
            let only = |key: &str| {
                toml::Value::Table(
                    start.iter().filter(|(k, _)| *k == key).map(|(k, v)| (k.clone(), v.clone())).collect(),
                )
            };
            let cluster: ClusterSettings = parse(only("initial_position"), &at)?;
            let consumer: ConsumerSettings = parse(only("initial_timestamp"), &at)?;
            Some((cluster.initial_position, consumer.initial_timestamp))
        };
        let pipeline = PipelineConfig::from_table(pipeline).map_err(|e| {
            let shared = SHARED_PIPELINE_KEYS.iter().any(|k| e.field.starts_with(k));
            if shared {
                e
            } else {
                ConfigError::new(format!("{at}.{}", e.field), e.problem)
            }
        })?;
        streams.push(StreamConfig { section, start, pipeline });
    }
    Ok(streams)
}

/// `value` as a `T`; an error names the key it is in (`node.failover_time: …`). serde reports a
/// missing field, an unknown field of a tagged enum's variant and a rule over several fields at
/// the struct: their key is the one the message names first.
fn parse<T: for<'de> Deserialize<'de>>(value: toml::Value, name: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().to_owned();
        if path != "." {
            return ConfigError::new(format!("{name}.{path}"), message);
        }
        let named = ["missing field `", "unknown field `", "`"].iter().find_map(|p| message.strip_prefix(p));
        match named.and_then(|rest| rest.split_once('`')) {
            Some((key, rest)) if message.starts_with('`') => {
                ConfigError::new(format!("{name}.{key}"), rest.trim_start_matches(": "))
            }
            Some((key, _)) => ConfigError::new(format!("{name}.{key}"), message),
            None => ConfigError::new(name, message),
        }
    })
}

/// `[warehouse]`. serde reads a tagged enum's variant from a buffer that forgets the key of an
/// error in it (`lock_tables = "no"`): then that kind's own type reads it again, to name the key.
fn warehouse_section(table: &mut toml::Table) -> Result<WarehouseSection, ConfigError> {
    let value = required(table.remove("warehouse"), "warehouse")?;
    parse(value.clone(), "warehouse").map_err(|e| {
        if e.field != "warehouse" {
            return e;
        }
        let mut keys = value.as_table().cloned().unwrap_or_default();
        let kind = keys.remove("kind");
        let keys = toml::Value::Table(keys);
        let again = match kind.as_ref().and_then(toml::Value::as_str) {
            Some("postgres") => parse::<PostgresSection>(keys, "warehouse").err(),
            Some("sqlite") => parse::<SqliteSection>(keys, "warehouse").err(),
            Some("redshift") => parse::<RedshiftSection>(keys, "warehouse").err(),
            _ => None,
        };
        again.unwrap_or(e)
    })
}

fn section<T: for<'de> Deserialize<'de>>(table: &mut toml::Table, name: &str) -> Result<Option<T>, ConfigError> {
    table.remove(name).map(|value| parse(value, name)).transpose()
}

/// The keys of `[node]`: those of its four settings types.
pub fn node_keys() -> Vec<&'static str> {
    [keys::<NodeSettings>(), keys::<ClusterSettings>(), keys::<ConsumerSettings>(), keys::<SinkSettings>()].concat()
}

/// Every key of each section the node reads, as its parser reads them (the tests of the docs and
/// of the Helm chart compare theirs with these).
pub fn keys_by_section() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("node", node_keys()),
        ("stream", keys::<StreamSection>().to_vec()),
        ("lease_table", keys::<LeaseTableSection>().to_vec()),
        ("warehouse", warehouse_keys()),
        ("metrics", keys::<MetricsSection>().to_vec()),
    ]
}

/// `kind` and the keys of every kind.
fn warehouse_keys() -> Vec<&'static str> {
    let mut all = vec!["kind"];
    for key in [keys::<PostgresSection>(), keys::<SqliteSection>(), keys::<RedshiftSection>()].concat() {
        if !all.contains(&key) {
            all.push(key);
        }
    }
    all
}

/// `[node]`, one flat section over four settings types. Each type reads the keys it declares (its
/// `Deserialize` refuses any other); a key none of them declares is refused here, as serde would.
/// Not `serde(flatten)`: it reads through a buffer that loses the key an error is in.
fn node_section(
    table: &mut toml::Table,
) -> Result<(NodeSettings, ClusterSettings, ConsumerSettings, SinkSettings), ConfigError> {
    let node: toml::Table = section(table, "node")?.unwrap_or_default();
    let all = node_keys();
    if let Some(key) = node.keys().find(|k| !all.contains(&k.as_str())) {
        let expected: Vec<String> = all.iter().map(|k| format!("`{k}`")).collect();
        let problem = format!("unknown field `{key}`, expected one of {}", expected.join(", "));
        return Err(ConfigError::new(format!("node.{key}"), problem));
    }
    fn part<T: for<'de> Deserialize<'de>>(node: &toml::Table) -> Result<T, ConfigError> {
        let own = keys::<T>();
        let part = node.iter().filter(|(k, _)| own.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone()));
        parse(toml::Value::Table(part.collect()), "node")
    }
    Ok((part(&node)?, part(&node)?, part(&node)?, part(&node)?))
}

fn required<T>(value: Option<T>, name: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::new(name, "section is missing"))
}

/// Why a lease table cannot serve a config's layout: `[stream]` keys leases by shard id,
/// `[[stream]]` by `account:stream:epoch:shard`. A table holding the other layout's leases would
/// have its checkpoints ignored and its streams started over (from `initial_position`, skipping
/// or re-reading data), so the node refuses it. `None`: the table fits (or is empty).
pub fn layout_conflict(multi_stream: bool, lease_keys: &[&str]) -> Option<String> {
    let other = lease_keys.iter().find(|k| proto::stream_of(k).is_some() != multi_stream)?;
    Some(match multi_stream {
        true => format!(
            "holds single-stream leases (keyed by shard id, e.g. {other}), as a `[stream]` config writes them; \
             a `[[stream]]` config would start its streams over"
        ),
        false => format!(
            "holds multi-stream leases (keyed account:stream:epoch:shard, e.g. {other}), as a `[[stream]]` config \
             or a KCL multi-stream application writes them; write the streams as `[[stream]]` entries"
        ),
    })
}

/// `initial_timestamp` is set exactly when `initial_position = "at_timestamp"`.
fn check_start(field: &str, position: &proto::Checkpoint, at: Option<i64>) -> Result<(), ConfigError> {
    match (position == &proto::Checkpoint::AtTimestamp, at) {
        (true, None) => Err(ConfigError::new(field, "is needed with initial_position = \"at_timestamp\"")),
        (false, Some(_)) => Err(ConfigError::new(field, "is read only with initial_position = \"at_timestamp\"")),
        _ => Ok(()),
    }
}

/// Kinesis's rule for a stream consumer's name.
fn valid_consumer_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl RunConfig {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::new("config", e.message()))?;
        let (node, cluster, consumer, sink) = node_section(&mut table)?;
        let stream = required(table.remove("stream"), "stream")?;
        let lease_table = required(section(&mut table, "lease_table")?, "lease_table")?;
        let warehouse = warehouse_section(&mut table)?;
        let metrics = section(&mut table, "metrics")?;
        let (streams, multi_stream) = match stream {
            toml::Value::Array(entries) => {
                if let Some(key) = table.keys().find(|k| !SHARED_PIPELINE_KEYS.contains(&k.as_str())) {
                    let problem = "with [[stream]], each stream holds its own pipeline ([[stream.table]], …)";
                    return Err(ConfigError::new(key.clone(), problem));
                }
                (stream_entries(entries, &table)?, true)
            }
            single => {
                let section = parse(single, "stream")?;
                (vec![StreamConfig { section, start: None, pipeline: PipelineConfig::from_table(table)? }], false)
            }
        };
        let config = Self { node, cluster, consumer, sink, streams, multi_stream, lease_table, warehouse, metrics };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        let mut tables = std::collections::BTreeSet::new();
        for (i, stream) in self.streams.iter().enumerate() {
            let at = if self.multi_stream { format!("stream[{i}]") } else { "stream".to_owned() };
            if stream.section.name.is_empty() {
                return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
            }
            if !names.insert(stream.section.name.as_str()) {
                return Err(ConfigError::new(format!("{at}.name"), "names a stream listed before"));
            }
            for table in &stream.pipeline.tables {
                if !tables.insert(table.name.as_str()) {
                    return Err(ConfigError::new(
                        format!("{at}.table"),
                        format!("{:?} is written by another stream too", table.name),
                    ));
                }
            }
            let field = format!("{at}.consumer_name");
            match (&stream.section.consumer, &stream.section.consumer_name) {
                (ConsumerKind::Polling, Some(_)) => {
                    return Err(ConfigError::new(field, "is read only with consumer = \"efo\""))
                }
                (ConsumerKind::Efo, Some(name)) if !valid_consumer_name(name) => {
                    return Err(ConfigError::new(
                        field,
                        "must be 1 to 128 letters, digits, `_`, `.` or `-` (Kinesis's rule)",
                    ))
                }
                (ConsumerKind::Efo, None) if !valid_consumer_name(&self.lease_table.name) => {
                    return Err(ConfigError::new(
                        field,
                        "is needed: the lease table's name is not a valid consumer name",
                    ))
                }
                _ => {}
            }
            if let Some((position, at_ms)) = &stream.start {
                check_start(&format!("{at}.initial_timestamp"), position, *at_ms)?;
            }
        }
        if self.lease_table.name.is_empty() {
            return Err(ConfigError::new("lease_table.name", "must not be empty"));
        }
        if self.cluster.failover_time < Duration::from_secs(1) {
            return Err(ConfigError::new("node.failover_time", "must be at least 1s"));
        }
        if self.consumer.read_interval < Duration::from_millis(200) {
            return Err(ConfigError::new("node.read_interval", "must be at least 200ms (5 reads/s per shard)"));
        }
        if self.consumer.idle_read_interval < self.consumer.read_interval {
            return Err(ConfigError::new("node.idle_read_interval", "must not be shorter than read_interval"));
        }
        check_start("node.initial_timestamp", &self.cluster.initial_position, self.consumer.initial_timestamp)?;
        if self.sink.batch_latency.is_zero() {
            return Err(ConfigError::new("node.batch_latency", "must be above zero"));
        }
        if self.sink.batch_rows == 0 {
            return Err(ConfigError::new("node.batch_rows", "must be above zero"));
        }
        if self.sink.batch_bytes == 0 {
            return Err(ConfigError::new("node.batch_bytes", "must be above zero"));
        }
        let url = match &self.warehouse {
            WarehouseSection::Postgres(PostgresSection { url }) | WarehouseSection::Sqlite(SqliteSection { url }) => {
                url
            }
            WarehouseSection::Redshift(_) => return Ok(()),
        };
        if url.is_empty() {
            return Err(ConfigError::new("warehouse.url", "must not be empty"));
        }
        if url.contains("password") {
            return Err(ConfigError::new("warehouse.url", "must not hold a password (set PGPASSWORD)"));
        }
        if let WarehouseSection::Postgres(_) = self.warehouse {
            // The parser's message never quotes the string (it may hold a secret).
            let parsed = url
                .parse::<adapters::postgres::PostgresConfig>()
                .map_err(|e| ConfigError::new("warehouse.url", format!("not a postgresql connection string ({e})")))?;
            if parsed.get_password().is_some() {
                return Err(ConfigError::new("warehouse.url", "must not hold a password (set PGPASSWORD)"));
            }
        }
        Ok(())
    }

    /// The reference tables every stream's pipeline shares, each keeping the attributes any
    /// stream reads through it.
    pub fn reference_specs(&self) -> Vec<worker::reference_set::ReferenceSpec> {
        let mut specs: Vec<worker::reference_set::ReferenceSpec> = Vec::new();
        for stream in &self.streams {
            for spec in stream.pipeline.reference_specs() {
                match specs.iter_mut().find(|s| s.name == spec.name) {
                    Some(known) => {
                        for a in spec.attributes {
                            if !known.attributes.contains(&a) {
                                known.attributes.push(a);
                            }
                        }
                    }
                    None => specs.push(spec),
                }
            }
        }
        specs
    }

    /// The first (or only) stream: what commands that take one stream use.
    pub fn stream(&self) -> &StreamConfig {
        &self.streams[0]
    }

    /// This node's worker id.
    pub fn worker_id(&self) -> String {
        if let Some(id) = &self.node.id {
            return id.clone();
        }
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        format!("{host}-{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = r#"
[[table]]
name = "events"
key = ["id"]
column = [{ name = "id", from = "id", type = "text" }]
"#;

    fn config(head: &str) -> Result<RunConfig, ConfigError> {
        RunConfig::from_toml(&format!("{head}\n{PIPELINE}"))
    }

    const BASE: &str = r#"
[stream]
name = "s"
[lease_table]
name = "t"
[warehouse]
kind = "postgres"
url = "host=127.0.0.1"
"#;

    #[test]
    fn reads_the_sections_and_the_pipeline() {
        let c = config(&format!("[node]\nfailover_time = \"4s\"\n{BASE}")).unwrap();
        assert_eq!(c.cluster, ClusterSettings::with_failover(Duration::from_secs(4)));
        assert_eq!(c.stream().pipeline.tables.len(), 1);
        assert_eq!(c.cluster.initial_position, proto::Checkpoint::TrimHorizon);
    }

    #[test]
    fn errors_name_the_field() {
        let e = config(&format!("[node]\nfailover = \"4s\"\n{BASE}")).unwrap_err().to_string();
        assert!(e.starts_with("node.failover:") && e.contains("unknown field `failover`"), "{e}");
        let e = config(&BASE.replace("[stream]\nname = \"s\"\n", "")).unwrap_err().to_string();
        assert!(e.starts_with("stream:"), "{e}");
        let at = config(&format!(
            "[node]\ninitial_position = \"at_timestamp\"\ninitial_timestamp = \"2024-03-01T00:00:01.5Z\"\n{BASE}"
        ))
        .unwrap();
        assert_eq!(at.cluster.initial_position, proto::Checkpoint::AtTimestamp);
        assert_eq!(at.consumer.initial_timestamp, Some(1_709_251_201_500));
        for (node, field) in [
            ("initial_position = \"at_timestamp\"", "node.initial_timestamp: is needed"),
            ("initial_timestamp = \"2024-03-01T00:00:00Z\"", "node.initial_timestamp: is read only"),
            ("initial_position = \"at_timestamp\"\ninitial_timestamp = \"yesterday\"", "node.initial_timestamp:"),
        ] {
            let e = config(&format!("[node]\n{node}\n{BASE}")).unwrap_err().to_string();
            assert!(e.starts_with(field), "{node}: {e}");
        }
        let e = config(&format!("[node]\ninitial_position = \"oldest\"\n{BASE}")).unwrap_err().to_string();
        assert!(e.starts_with("node.initial_position:"), "{e}");
        let redshift =
            BASE.replace("kind = \"postgres\"\nurl = \"host=127.0.0.1\"", "kind = \"redshift\"\nworkgroup = \"w\"");
        let e = config(&redshift).unwrap_err().to_string();
        assert!(e.starts_with("warehouse.database:"), "{e}");
        let e = config(&format!("{redshift}database = \"dev\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("warehouse.secret_arn:"), "{e}");
        assert!(config(&format!("{redshift}database = \"dev\"\nsecret_arn = \"arn:s\"\n")).is_ok());
        let e = config(&BASE.replace("host=127.0.0.1", "host=x password=hunter2")).unwrap_err().to_string();
        assert!(e.starts_with("warehouse.url:") && !e.contains("hunter2"), "{e}");
        let e = config(&BASE.replace("host=127.0.0.1", "postgres://etl:hunter2@db/analytics")).unwrap_err().to_string();
        assert!(e.starts_with("warehouse.url:") && !e.contains("hunter2"), "{e}");
        let e = config(&BASE.replace("host=127.0.0.1", "host='unclosed hunter2")).unwrap_err().to_string();
        assert!(e.starts_with("warehouse.url:") && !e.contains("hunter2"), "{e}");
        let e = config(&format!("{BASE}[metrics]\nlisten = \"9898\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("metrics.listen:") && e.contains("socket address"), "{e}");
        let e = config(&format!("[node]\nbatch_rows = 0\n{BASE}")).unwrap_err().to_string();
        assert!(e.starts_with("node.batch_rows:"), "{e}");
        let c = config(&format!("{BASE}[metrics]\nlisten = \"127.0.0.1:9898\"\n")).unwrap();
        assert_eq!(c.metrics.unwrap().listen.port(), 9898);
    }

    /// `[stream] consumer`: polling unless `efo`; the consumer is named after the lease table
    /// unless `consumer_name` says otherwise; names Kinesis would refuse fail at load.
    #[test]
    fn the_stream_is_polled_unless_enhanced_fan_out_is_asked_for() {
        let polled = config(BASE).unwrap();
        assert_eq!(
            (polled.stream().section.consumer, polled.stream().consumer_name("t")),
            (ConsumerKind::Polling, None)
        );
        let efo = config(&BASE.replace("name = \"s\"\n", "name = \"s\"\nconsumer = \"efo\"\n")).unwrap();
        assert_eq!(efo.stream().consumer_name("t"), Some("t"));
        let named = BASE.replace("name = \"s\"\n", "name = \"s\"\nconsumer = \"efo\"\nconsumer_name = \"etl.v2\"\n");
        assert_eq!(config(&named).unwrap().stream().consumer_name("t"), Some("etl.v2"));
        for (stream, field) in [
            ("consumer = \"push\"", "stream.consumer: unknown variant `push`"),
            ("consumer_name = \"etl\"", "stream.consumer_name: is read only with consumer = \"efo\""),
            ("consumer = \"efo\"\nconsumer_name = \"etl v2\"", "stream.consumer_name: must be 1 to 128"),
        ] {
            let e =
                config(&BASE.replace("name = \"s\"\n", &format!("name = \"s\"\n{stream}\n"))).unwrap_err().to_string();
            assert!(e.starts_with(field), "{stream}: {e}");
        }
        let e =
            config(&BASE.replace("name = \"s\"\n", "name = \"s\"\nconsumer = \"efo\"\n").replace("\"t\"", "\"t:1\""))
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("stream.consumer_name: is needed"), "{e}");
    }

    /// A lease table of one layout is refused by a config of the other.
    #[test]
    fn a_lease_table_of_the_other_layout_is_refused() {
        let single = ["shardId-000000000000", "shardId-000000000001"];
        let multi = ["111122223333:orders:1700000000:shardId-000000000000"];
        assert_eq!(layout_conflict(false, &single), None);
        assert_eq!(layout_conflict(true, &multi), None);
        assert_eq!(layout_conflict(true, &[]), None);
        assert!(layout_conflict(true, &single).unwrap().contains("single-stream leases"));
        assert!(layout_conflict(false, &multi).unwrap().contains("multi-stream leases"));
    }

    /// `[[stream]]`: each entry its own keys, start and pipeline; references shared; mistakes
    /// named by entry.
    #[test]
    fn several_streams_each_with_their_own_pipeline() {
        let two = |first: &str, second: &str, top: &str| {
            format!(
                "{top}\n[[reference]]\nname = \"r\"\nkey = \"id\"\n\
                 [[stream]]\nname = \"a\"\n{first}\n[[stream.table]]\nname = \"ta\"\nkey = [\"id\"]\n\
                 column = [{{ name = \"id\", from = \"id\", type = \"text\" }}]\n\
                 [[stream]]\nname = \"b\"\n{second}\n[[stream.table]]\nname = \"tb\"\nkey = [\"id\"]\n\
                 column = [{{ name = \"id\", from = \"id\", type = \"text\" }}]\n\
                 [lease_table]\nname = \"t\"\n[warehouse]\nkind = \"postgres\"\nurl = \"host=127.0.0.1\"\n"
            )
        };
        let c = RunConfig::from_toml(&two("format = \"dms\"", "initial_position = \"latest\"", "")).unwrap();
        assert!(c.multi_stream);
        assert_eq!(c.streams[0].pipeline.format, worker::pipeline::config::Format::Dms);
        assert_eq!(c.streams[1].start, Some((proto::Checkpoint::Latest, None)));
        assert!(c.streams.iter().all(|s| s.pipeline.references.len() == 1), "references are shared");
        // A reference keeps what any stream reads through it (here the second stream's join).
        let joined = two("", "", "").replace(
            "name = \"tb\"\n",
            "name = \"tb\"\njoin = [{ reference = \"r\", key = \"id\", on_missing = \"null\" }]\n",
        );
        let joined = joined.replace(
            "type = \"text\" }]\n[lease",
            "type = \"text\" }, { name = \"c\", from = \"r.city\", type = \"text\" }]\n[lease",
        );
        let specs = RunConfig::from_toml(&joined).unwrap().reference_specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].attributes, ["city"], "{specs:?}");
        for (first, second, top, field) in [
            ("", "initial_position = \"at_timestamp\"", "", "stream[1].initial_timestamp: is needed"),
            ("polling = 1", "", "", "stream[0].polling: unknown field"),
            ("format = \"xml\"", "", "", "stream[0].format:"),
            ("", "", "format = \"json\"", "format: with [[stream]]"),
            ("consumer_name = \"c\"", "", "", "stream[0].consumer_name: is read only"),
        ] {
            let text = two(first, second, top);
            let e = RunConfig::from_toml(&text).unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        let same_name = two("", "", "").replace("name = \"b\"", "name = \"a\"");
        let e = RunConfig::from_toml(&same_name).unwrap_err().to_string();
        assert!(e.starts_with("stream[1].name: names a stream listed before"), "{e}");
        let same_table = two("", "", "").replace("name = \"tb\"", "name = \"ta\"");
        let e = RunConfig::from_toml(&same_table).unwrap_err().to_string();
        assert!(e.starts_with("stream[1].table: \"ta\" is written by another stream"), "{e}");
    }

    /// README: `lock_tables = true (the default)` for Redshift, `false` only when set.
    #[test]
    fn redshift_locks_tables_unless_told_not_to() {
        let redshift = BASE.replace(
            "kind = \"postgres\"\nurl = \"host=127.0.0.1\"",
            "kind = \"redshift\"\nworkgroup = \"w\"\ndatabase = \"dev\"\nsecret_arn = \"arn:s\"",
        );
        let lock_tables = |text: &str| match config(text).unwrap().warehouse {
            WarehouseSection::Redshift(r) => r.lock_tables,
            other => panic!("{other:?}"),
        };
        assert!(lock_tables(&redshift), "lock_tables must default to true");
        assert!(!lock_tables(&format!("{redshift}\nlock_tables = false\n")));
    }

    /// README: Redshift loads by statements unless `s3_staging` is set; then `auto` loads batches
    /// of `copy_min_rows` (1,000) rows or more by COPY, `copy` every batch; each key that cannot
    /// be used as written is refused by name.
    #[test]
    fn redshift_loads_by_copy_when_it_has_a_staging_prefix() {
        let redshift = BASE.replace(
            "kind = \"postgres\"\nurl = \"host=127.0.0.1\"",
            "kind = \"redshift\"\nworkgroup = \"w\"\ndatabase = \"dev\"\nsecret_arn = \"arn:s\"",
        );
        let load = |extra: &str| match config(&format!("{redshift}\n{extra}\n")) {
            Ok(RunConfig { warehouse: WarehouseSection::Redshift(r), .. }) => Ok(r.load),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let role = "arn:aws:iam::111122223333:role/redshift-copy";
        let staging = S3Prefix { bucket: "my-bucket".into(), prefix: "tributary/".into() };
        let copy = |role: &str, min_rows| Ok(Load::Copy { staging: staging.clone(), role: role.into(), min_rows });
        let with_prefix = format!("s3_staging = \"s3://my-bucket/tributary\"\ncopy_role = \"{role}\"");

        assert_eq!(load(""), Ok(Load::Statements));
        assert_eq!(load("load = \"statements\""), Ok(Load::Statements));
        assert_eq!(load(&with_prefix), copy(role, 1_000));
        assert_eq!(load(&format!("{with_prefix}\nload = \"auto\"\ncopy_min_rows = 5")), copy(role, 5));
        assert_eq!(load(&format!("{with_prefix}\nload = \"copy\"")), copy(role, 1));
        let default_role = "s3_staging = \"s3://my-bucket/tributary/\"\ncopy_role = \"default\"";
        assert_eq!(load(default_role), copy("default", 1_000));
        let chain = format!("{role},arn:aws:iam::444455556666:role/reader");
        assert_eq!(
            load(&format!("s3_staging = \"s3://my-bucket/tributary/\"\ncopy_role = \"{chain}\"")),
            copy(&chain, 1_000)
        );

        let refused = |extra: &str, field: &str| {
            let e = load(extra).expect_err(extra);
            assert!(e.starts_with(&format!("warehouse.{field}:")), "{extra}: {e}");
        };
        refused("load = \"copy\"", "s3_staging");
        refused("load = \"bulk\"", "load");
        refused(&format!("{with_prefix}\nload = \"statements\""), "s3_staging");
        refused(&format!("copy_role = \"{role}\""), "copy_role");
        refused("copy_min_rows = 10", "copy_min_rows");
        refused("s3_staging = \"s3://my-bucket/\"", "copy_role");
        refused(&format!("s3_staging = \"my-bucket/x\"\ncopy_role = \"{role}\""), "s3_staging");
        refused(&format!("s3_staging = \"s3://My_Bucket/x\"\ncopy_role = \"{role}\""), "s3_staging");
        refused("s3_staging = \"s3://my-bucket/\"\ncopy_role = \"my-role\"", "copy_role");
        refused("s3_staging = \"s3://my-bucket/\"\ncopy_role = \"arn:aws:iam::1:role/x\"", "copy_role");
        refused("s3_staging = \"s3://my-bucket/\"\ncopy_role = \"arn:aws:iam::111122223333:user/x\"", "copy_role");
        refused(&format!("{with_prefix}\nload = \"copy\"\ncopy_min_rows = 10"), "copy_min_rows");
        refused(&format!("{with_prefix}\ncopy_min_rows = 0"), "copy_min_rows");
    }

    /// A `[warehouse]` holds one kind's keys and nothing that kind cannot use; every mistake is
    /// refused at load, naming its key.
    #[test]
    fn a_warehouse_is_one_kind_with_its_own_keys() {
        let warehouse = |keys: &str| config(&BASE.replace("kind = \"postgres\"\nurl = \"host=127.0.0.1\"", keys));
        let refused = |keys: &str| warehouse(keys).unwrap_err().to_string();
        let w = warehouse("kind = \"redshift\"\ncluster = \"c\"\ndatabase = \"dev\"\ndb_user = \"etl\"").unwrap();
        let want = RedshiftSection {
            target: Target::Cluster { identifier: "c".into() },
            database: "dev".into(),
            secret_arn: None,
            db_user: Some("etl".into()),
            lock_tables: true,
            load: Load::Statements,
        };
        assert_eq!(w.warehouse, WarehouseSection::Redshift(want));
        let w = warehouse("kind = \"sqlite\"\nurl = \"/data/t.db\"").unwrap();
        assert_eq!(w.warehouse, WarehouseSection::Sqlite(SqliteSection { url: "/data/t.db".into() }));
        for (keys, field, says) in [
            ("url = \"x\"", "warehouse.kind:", "missing field `kind`"),
            ("kind = \"mysql\"", "warehouse.kind:", "unknown variant `mysql`, expected one of `postgres`, `sqlite`"),
            ("kind = \"sqlite\"", "warehouse.url:", "missing field `url`"),
            ("kind = \"sqlite\"\nurl = \"\"", "warehouse.url:", "must not be empty"),
            ("kind = \"sqlite\"\nurl = 5", "warehouse.url:", "invalid type: integer `5`, expected a string"),
            ("kind = \"postgres\"\nurl = \"host=x\"\nlock_tables = false", "warehouse.lock_tables:", "unknown field"),
            ("kind = \"redshift\"\nurl = \"host=x\"", "warehouse.url:", "unknown field `url`"),
            (
                "kind = \"redshift\"\nworkgroup = \"w\"\ndatabase = \"d\"\nsecret_arn = \"s\"\nlock_tables = \"no\"",
                "warehouse.lock_tables:",
                "expected a boolean",
            ),
            (
                "kind = \"redshift\"\nworkgroup = \"w\"\ncluster = \"c\"\ndatabase = \"d\"\nsecret_arn = \"s\"",
                "warehouse.cluster:",
                "set exactly one of cluster and workgroup",
            ),
            ("kind = \"redshift\"\ndatabase = \"d\"\nsecret_arn = \"s\"", "warehouse.cluster:", "set exactly one"),
            (
                "kind = \"redshift\"\nworkgroup = \"w\"\ndatabase = \"d\"\ndb_user = \"etl\"",
                "warehouse.secret_arn:",
                "db_user with a cluster",
            ),
        ] {
            let e = refused(keys);
            assert!(e.starts_with(field) && e.contains(says) && e.lines().count() == 1, "{keys}: {e}");
        }
    }

    /// README: the node id is `$POD_NAME` plus the process id, so a container restarted in its
    /// pod (PID 1 again) gets the same id. The only test of this binary that sets `POD_NAME`.
    #[test]
    fn the_worker_id_is_the_pod_name_and_the_process_id() {
        let before = std::env::var_os("POD_NAME");
        std::env::set_var("POD_NAME", "pod-a");
        let c = config(BASE).unwrap();
        let (first, second) = (c.worker_id(), c.worker_id());
        match before {
            Some(v) => std::env::set_var("POD_NAME", v),
            None => std::env::remove_var("POD_NAME"),
        }
        assert_eq!(first, format!("pod-a-{}", std::process::id()));
        assert_eq!(second, first, "the same process asks twice, the same id");
        let named = config(&format!("[node]\nid = \"fixed\"\n{BASE}")).unwrap();
        assert_eq!(named.worker_id(), "fixed");
    }
}
