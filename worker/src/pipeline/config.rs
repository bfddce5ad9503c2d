//! The pipeline's configuration: `[[reference]]` tables to join with, `[[table]]` targets with
//! their key, columns, joins and transforms. Parsed with unknown fields refused, then checked by
//! `validate`, whose errors name the field (`table[0].column[2].from: …`).

use proto::duration;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// How records are encoded (`decode.rs` reads each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Dms,
}

const fn default_refresh() -> Duration {
    Duration::from_secs(60)
}
const fn default_poll() -> Duration {
    Duration::from_secs(1)
}
const fn default_max_items() -> usize {
    5_000_000
}
const fn default_max_wait() -> Duration {
    Duration::from_secs(60)
}
const fn default_max_record_bytes() -> usize {
    1 << 20
}
const fn default_format() -> Format {
    Format::Json
}
fn default_key_env() -> String {
    "TRIBUTARY_TOKENIZE_KEY".to_owned()
}
fn default_before_image_field() -> String {
    "before-image".to_owned()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// How records are encoded: `json` or `dms`. KPL aggregation is recognised either way.
    #[serde(default = "default_format")]
    pub format: Format,
    /// Records larger than this go to the dead letters.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// The environment variable holding the `tokenize` key (never the key itself).
    #[serde(default = "default_key_env")]
    pub tokenize_key_env: String,
    /// Where DMS puts a row's old values: the task's `BeforeImageSettings.FieldName`.
    #[serde(default = "default_before_image_field")]
    pub before_image_field: String,
    #[serde(default, rename = "reference")]
    pub references: Vec<ReferenceConfig>,
    #[serde(rename = "table")]
    pub tables: Vec<TableConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    pub name: String,
    /// The table in the reference source (default: `name`).
    pub table: Option<String>,
    /// The attribute holding the lookup key.
    pub key: String,
    #[serde(default = "default_refresh", deserialize_with = "duration::deserialize")]
    pub refresh_interval: Duration,
    #[serde(default = "default_poll", deserialize_with = "duration::deserialize")]
    pub poll_interval: Duration,
    #[serde(default = "default_max_items")]
    pub max_items: usize,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionSource {
    /// The source's own order (DMS commit order), else the record's position.
    Source,
    /// The record's position in its shard.
    Sequence,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    /// Only changes of this source table (DMS `schema.table` or `table`).
    pub source_table: Option<String>,
    /// The key columns (names of this table's columns).
    pub key: Vec<String>,
    #[serde(default = "default_version")]
    pub version: VersionSource,
    #[serde(default, rename = "join")]
    pub joins: Vec<JoinConfig>,
    #[serde(rename = "column")]
    pub columns: Vec<ColumnConfig>,
}

const fn default_version() -> VersionSource {
    VersionSource::Source
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnMissing {
    /// Join columns are NULL.
    Null,
    /// The record goes to the dead letters.
    DeadLetter,
    /// The shard waits (up to `max_wait`) for the reference row to appear, then dead-letters.
    Wait,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// A `[[reference]]` name.
    pub reference: String,
    /// The name columns use to refer to the joined row (default: the reference's name).
    #[serde(rename = "as")]
    pub alias: Option<String>,
    /// Where the lookup key comes from: a record field path or `<earlier join>.<attribute>`.
    pub key: String,
    pub on_missing: OnMissing,
    #[serde(default = "default_max_wait", deserialize_with = "duration::deserialize")]
    pub max_wait: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Boolean,
    Bigint,
    Double,
    Text,
    Timestamp,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// Letters and digits become `*`.
    Mask,
    /// HMAC-SHA256 hex with the key from `tokenize_key_env`.
    Tokenize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    pub name: String,
    /// A record field path (`a.b`), `<join>.<attribute>`, or metadata: `@shard_id`,
    /// `@sequence_number`, `@sub_sequence`, `@partition_key`, `@arrival_time`, `@payload`,
    /// `@operation`, `@source_table`.
    pub from: Option<String>,
    /// A constant instead of `from`.
    pub value: Option<serde_json::Value>,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    pub transform: Option<Transform>,
}

pub const METADATA: [&str; 8] = [
    "@shard_id",
    "@sequence_number",
    "@sub_sequence",
    "@partition_key",
    "@arrival_time",
    "@payload",
    "@operation",
    "@source_table",
];

/// A configuration error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(field, problem)
}

impl PipelineConfig {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let field = e.span().map(|s| format!("at byte {}", s.start)).unwrap_or_else(|| "config".into());
            err(field, e.message().to_owned())
        })?;
        Self::from_table(table)
    }

    /// The pipeline from the part of a larger file that holds it. A value of the wrong shape is
    /// reported with its path (`table[0].column[3].type: unknown variant …`).
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let config: Self = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "pipeline".to_owned() } else { path };
            err(path, e.into_inner().message())
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut refs = BTreeSet::new();
        for (i, r) in self.references.iter().enumerate() {
            let at = format!("reference[{i}]");
            if r.name.is_empty() {
                return Err(err(format!("{at}.name"), "must not be empty"));
            }
            if !refs.insert(r.name.as_str()) {
                return Err(err(format!("{at}.name"), format!("{:?} is defined twice", r.name)));
            }
            if r.key.is_empty() {
                return Err(err(format!("{at}.key"), "must not be empty"));
            }
            if r.poll_interval.is_zero() || r.refresh_interval.is_zero() {
                return Err(err(format!("{at}.refresh_interval"), "intervals must be above zero"));
            }
        }
        if self.tables.is_empty() {
            return Err(err("table", "at least one [[table]] is needed"));
        }
        let mut names = BTreeSet::new();
        for (t, table) in self.tables.iter().enumerate() {
            let at = format!("table[{t}]");
            if table.name.is_empty() || !names.insert(table.name.as_str()) {
                return Err(err(format!("{at}.name"), format!("{:?} is empty or defined twice", table.name)));
            }
            // PostgreSQL cuts names at 63 bytes, and the sink adds `__deleted` / `__stage`: a
            // longer name would make those collide with each other or another table.
            if table.name.len() > MAX_TABLE_NAME_BYTES {
                return Err(err(format!("{at}.name"), format!("longer than {MAX_TABLE_NAME_BYTES} bytes")));
            }
            let mut aliases: Vec<&str> = Vec::new();
            let all_aliases: Vec<&str> =
                table.joins.iter().map(|j| j.alias.as_deref().unwrap_or(&j.reference)).collect();
            for (j, join) in table.joins.iter().enumerate() {
                let at = format!("{at}.join[{j}]");
                if !refs.contains(join.reference.as_str()) {
                    return Err(err(format!("{at}.reference"), format!("no [[reference]] named {:?}", join.reference)));
                }
                let alias = join.alias.as_deref().unwrap_or(&join.reference);
                if aliases.contains(&alias) {
                    return Err(err(format!("{at}.as"), format!("{alias:?} is used by an earlier join")));
                }
                check_path(&join.key).map_err(|p| err(format!("{at}.key"), p))?;
                // A key read from this join or a later one would silently read a record field.
                let head = join.key.split('.').next().unwrap_or_default();
                if join.key.contains('.') && all_aliases[j..].contains(&head) {
                    return Err(err(
                        format!("{at}.key"),
                        format!("{:?} reads join {head:?}, which is not joined yet: a join key reads the record or earlier joins", join.key),
                    ));
                }
                aliases.push(alias);
            }
            let mut columns = BTreeSet::new();
            for (c, column) in table.columns.iter().enumerate() {
                let at = format!("{at}.column[{c}]");
                if column.name.is_empty() || !columns.insert(column.name.as_str()) {
                    return Err(err(format!("{at}.name"), format!("{:?} is empty or defined twice", column.name)));
                }
                if column.name.len() > MAX_NAME_BYTES {
                    return Err(err(format!("{at}.name"), format!("longer than {MAX_NAME_BYTES} bytes")));
                }
                if RESERVED_COLUMNS.contains(&column.name.as_str()) {
                    return Err(err(format!("{at}.name"), format!("{:?} is the sink's own column", column.name)));
                }
                match (&column.from, &column.value) {
                    (Some(from), None) => check_path(from).map_err(|p| err(format!("{at}.from"), p))?,
                    (None, Some(_)) => {}
                    _ => return Err(err(at, "give exactly one of `from` and `value`")),
                }
                if column.transform.is_some() && column.ty != ColumnType::Text {
                    return Err(err(format!("{at}.transform"), "mask and tokenize apply to text columns"));
                }
            }
            if table.key.is_empty() {
                return Err(err(format!("{at}.key"), "at least one key column is needed"));
            }
            for k in &table.key {
                let Some(column) = table.columns.iter().find(|c| &c.name == k) else {
                    return Err(err(format!("{at}.key"), format!("{k:?} is not a column of the table")));
                };
                // Deletes carry only the record's own fields: a key must come from them.
                let from_join = column
                    .from
                    .as_deref()
                    .and_then(|f| f.split('.').next())
                    .is_some_and(|head| aliases.contains(&head));
                if from_join || column.value.is_some() || column.transform.is_some() {
                    return Err(err(
                        format!("{at}.key"),
                        format!("key column {k:?} must come from the record itself, untransformed"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What the reference caches need to know.
    pub fn reference_specs(&self) -> Vec<crate::reference_set::ReferenceSpec> {
        // Each reference keeps only the attributes some column or join key reads through it.
        let mut used: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for table in &self.tables {
            let mut aliases: Vec<(&str, &str)> = Vec::new();
            let mut note = |path: &str, aliases: &[(&str, &str)]| {
                let mut parts = path.trim_start_matches("$.").split('.');
                let (Some(head), Some(attribute)) = (parts.next(), parts.next()) else { return };
                if let Some((_, reference)) = aliases.iter().find(|(alias, _)| *alias == head) {
                    used.entry((*reference).to_owned()).or_default().insert(attribute.to_owned());
                }
            };
            for join in &table.joins {
                note(&join.key, &aliases);
                aliases.push((join.alias.as_deref().unwrap_or(&join.reference), &join.reference));
            }
            for column in &table.columns {
                if let Some(from) = &column.from {
                    note(from, &aliases);
                }
            }
        }
        self.references
            .iter()
            .map(|r| crate::reference_set::ReferenceSpec {
                name: r.name.clone(),
                table: r.table.clone().unwrap_or_else(|| r.name.clone()),
                key: r.key.clone(),
                attributes: used.get(&r.name).map(|a| a.iter().cloned().collect()).unwrap_or_default(),
                refresh_interval: r.refresh_interval,
                poll_interval: r.poll_interval,
                max_items: r.max_items,
            })
            .collect()
    }

    /// Whether any column is tokenized (then the key must be in the environment).
    pub fn tokenizes(&self) -> bool {
        self.tables.iter().flat_map(|t| &t.columns).any(|c| c.transform == Some(Transform::Tokenize))
    }
}

/// The longest identifier PostgreSQL keeps whole (Redshift keeps 127).
const MAX_NAME_BYTES: usize = 63;
/// A target table's name leaves room for the `__deleted` the sink appends.
const MAX_TABLE_NAME_BYTES: usize = MAX_NAME_BYTES - "__deleted".len();
/// Columns the sink adds to a target table (the version) or its stage table.
const RESERVED_COLUMNS: [&str; 3] = ["_version", "_op", "_ord"];

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.starts_with('@') && !METADATA.contains(&path) {
        return Err(format!("unknown metadata {path:?}; known: {}", METADATA.join(", ")));
    }
    if path.split('.').any(str::is_empty) {
        return Err(format!("{path:?} has an empty segment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
format = "dms"

[[reference]]
name = "customer"
key = "customer_id"
refresh_interval = "30s"

[[table]]
name = "activity"
source_table = "sales.ticket_activity"
key = ["ticket_id"]

[[table.join]]
reference = "customer"
as = "c"
key = "purchased_by"
on_missing = "null"

[[table.column]]
name = "ticket_id"
from = "ticket_id"
type = "bigint"

[[table.column]]
name = "phone"
from = "c.phone"
type = "text"
transform = "mask"

[[table.column]]
name = "shard"
from = "@shard_id"
type = "text"
"#;

    /// README defaults: a reference table holds at most 5,000,000 items unless told otherwise,
    /// and a shard's consumer has at most 50,000 rows in flight.
    #[test]
    fn readme_defaults() {
        let c = PipelineConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.references[0].max_items, 5_000_000);
        assert_eq!(c.reference_specs()[0].max_items, 5_000_000);
        let c = PipelineConfig::from_toml(&GOOD.replace("refresh_interval = \"30s\"", "max_items = 7")).unwrap();
        assert_eq!(c.reference_specs()[0].max_items, 7);
        assert_eq!(crate::ConsumerSettings::default().max_in_flight_rows, 50_000);
    }

    #[test]
    fn a_good_config_parses() {
        let c = PipelineConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.format, Format::Dms);
        assert_eq!(c.references[0].refresh_interval, Duration::from_secs(30));
        assert_eq!(c.references[0].poll_interval, Duration::from_secs(1));
        assert_eq!(c.tables[0].joins[0].on_missing, OnMissing::Null);
        assert!(!c.tokenizes());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("reference = \"customer\"", "reference = \"custmer\""),
                "table[0].join[0].reference: no [[reference]] named \"custmer\"",
            ),
            (
                GOOD.replace("key = [\"ticket_id\"]", "key = [\"nope\"]"),
                "table[0].key: \"nope\" is not a column of the table",
            ),
            (
                GOOD.replace("from = \"@shard_id\"", "from = \"@shard\""),
                "table[0].column[2].from: unknown metadata \"@shard\"",
            ),
            (
                GOOD.replace("transform = \"mask\"", "transform = \"mask\"\nvalue = 3"),
                "table[0].column[1]: give exactly one of `from` and `value`",
            ),
            (
                GOOD.replace("from = \"ticket_id\"", "from = \"c.id\""),
                "table[0].key: key column \"ticket_id\" must come from the record itself",
            ),
            (GOOD.replace("refresh_interval = \"30s\"", "refresh_interval = \"30 parsecs\""), "invalid duration"),
            (GOOD.replace("format = \"dms\"", "format = \"dms\"\nformatt = 1"), "unknown field `formatt`"),
            (GOOD.replace("type = \"bigint\"", "type = \"int\""), "table[0].column[0].type: unknown variant `int`"),
            (
                GOOD.replace("on_missing = \"null\"", "on_missing = \"skip\""),
                "table[0].join[0].on_missing: unknown variant",
            ),
            (
                GOOD.replace("name = \"activity\"", &format!("name = \"{}\"", "a".repeat(55))),
                "table[0].name: longer than 54 bytes",
            ),
            (
                GOOD.replace("name = \"shard\"", "name = \"_version\""),
                "table[0].column[2].name: \"_version\" is the sink's own column",
            ),
            (
                GOOD.replace("key = \"purchased_by\"", "key = \"c.region\""),
                "table[0].join[0].key: \"c.region\" reads join \"c\", which is not joined yet",
            ),
        ];
        for (text, expected) in cases {
            let e = PipelineConfig::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}\n  expected: {expected}");
        }
    }
}
