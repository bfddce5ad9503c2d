//! The configs the docs show load with the node's own parser, and every default README.md states
//! is the code's. README.md's `node.toml` is its pipeline example followed by its sections
//! example (as the README says the file is laid out); the Redshift `[warehouse]` written there in
//! comments is loaded too. Defaults are read from the `[node]` table (every key of `[node]`, each
//! with its default) and from the prose's ``"`key` (default `value`)"``: each value, written into
//! the example config, must change nothing. (The Helm chart's configs are rendered and loaded by
//! `tests/helm_chart.rs`, which needs helm.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tributary::run_config::{node_keys, RunConfig, WarehouseSection};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The ```toml blocks of a Markdown text.
fn toml_blocks(markdown: &str) -> Vec<String> {
    markdown.split("```toml\n").skip(1).map(|b| b.split("\n```").next().unwrap().to_owned()).collect()
}

fn load(text: &str) -> RunConfig {
    RunConfig::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// README.md's node.toml, and the same with its Redshift `[warehouse]` (the commented lines from
/// `# [warehouse]` on) in place of the PostgreSQL one.
fn readme_configs() -> (String, String) {
    let blocks = toml_blocks(&readme());
    let find =
        |needle: &str| blocks.iter().find(|b| b.contains(needle)).unwrap_or_else(|| panic!("no {needle} example"));
    let (pipeline, sections) = (find("[[table]]"), find("[node]"));
    let mut live = Vec::new();
    let mut redshift = Vec::new();
    let mut section = "";
    for line in sections.lines() {
        if line.starts_with('[') {
            section = line;
        }
        match line.strip_prefix("# ") {
            Some(commented) if commented.starts_with("[warehouse]") || !redshift.is_empty() => {
                redshift.push(commented.to_owned())
            }
            _ if section.starts_with("[warehouse]") => {}
            _ => live.push(line.to_owned()),
        }
    }
    assert!(redshift.len() > 2, "README.md: no commented Redshift [warehouse] in\n{sections}");
    let postgres = format!("{pipeline}\n{sections}");
    let redshift = format!("{pipeline}\n{}\n{}\n", live.join("\n"), redshift.join("\n"));
    (postgres, redshift)
}

#[test]
fn the_readme_examples_load() {
    let (postgres, redshift) = readme_configs();
    let config = load(&postgres);
    assert!(matches!(config.warehouse, WarehouseSection::Postgres(_)), "{:?}", config.warehouse);
    assert!(config.metrics.is_some() && !config.stream().pipeline.references.is_empty());
    let config = load(&redshift);
    assert!(matches!(config.warehouse, WarehouseSection::Redshift(_)), "{:?}", config.warehouse);
    // Every other ```toml block of the docs is at least TOML.
    let docs = ["README.md", "deploy/README.md", "deploy/helm/README.md", "deploy/docker/README.md"];
    for doc in docs.iter().map(|d| repo().join(d)).filter(|p| Path::exists(p)) {
        for block in toml_blocks(&std::fs::read_to_string(&doc).unwrap()) {
            toml::from_str::<toml::Table>(&block).unwrap_or_else(|e| panic!("{}: {e}\n{block}", doc.display()));
        }
    }
}

/// `value` (TOML) as the README writes it: `"10s"`, `5_000`, `true`.
fn toml_value(key: &str, value: &str) -> toml::Value {
    let table: toml::Table =
        toml::from_str(&format!("v = {value}")).unwrap_or_else(|e| panic!("README: `{key}` (default `{value}`): {e}"));
    table["v"].clone()
}

/// The README's `[node]` table: each key with its default (`None`: none stated).
fn node_table(readme: &str) -> Vec<(String, Option<String>)> {
    let start = readme.find("| key | default |").expect("README.md: the [node] table (| key | default | what |)");
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let code = |cell: &str| cell.split('`').nth(1).map(str::to_owned);
            (code(cells[1]).unwrap_or_else(|| panic!("a key: {row}")), code(cells[2]))
        })
        .collect()
}

/// The prose's ``"`key` (default `value`)"``, but for command-line options (`--db FILE`).
fn prose_defaults(readme: &str) -> Vec<(String, String)> {
    readme
        .match_indices("` (default `")
        .map(|(at, found)| {
            let key = &readme[readme[..at].rfind('`').unwrap() + 1..at];
            let rest = &readme[at + found.len()..];
            (key.to_owned(), rest[..rest.find('`').unwrap()].to_owned())
        })
        .filter(|(key, _)| !key.starts_with("--"))
        .collect()
}

/// Writes `key = value` where it belongs in `config` (node.toml as a table).
fn set(config: &mut toml::Table, key: &str, value: toml::Value) {
    use worker::pipeline::config::{PipelineConfig, ReferenceConfig};
    use worker::settings::keys;
    let sections = tributary::run_config::keys_by_section();
    let table = if let Some((section, _)) = sections.iter().find(|(_, keys)| keys.contains(&key)) {
        config[*section].as_table_mut().unwrap()
    } else if keys::<ReferenceConfig>().contains(&key) {
        config["reference"][0].as_table_mut().unwrap()
    } else if keys::<PipelineConfig>().contains(&key) {
        config
    } else {
        panic!("README.md states a default for `{key}`: tell this test where that key is written")
    };
    table.insert(key.to_owned(), value);
}

#[test]
fn every_default_the_readme_states_is_the_codes() {
    let readme = readme();
    let table = node_table(&readme);
    let listed: BTreeSet<&str> = table.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(listed, node_keys().into_iter().collect(), "README.md's [node] table lists every key of [node]");
    let mut stated: Vec<(String, String)> = table.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    stated.extend(prose_defaults(&readme));
    assert!(stated.len() >= 11, "the README's defaults were not found: {stated:?}");
    let (postgres, redshift) = readme_configs();
    for base in [postgres, redshift] {
        let base: toml::Table = toml::from_str(&base).unwrap();
        // The example with every stated default taken out: the code's defaults.
        let mut defaults = base.clone();
        for (key, _) in &stated {
            for section in ["node", "warehouse"] {
                defaults[section].as_table_mut().unwrap().remove(key);
            }
        }
        let code = load(&toml::to_string(&defaults).unwrap());
        for (key, value) in &stated {
            let redshift_only = ["lock_tables", "load", "copy_min_rows"];
            if redshift_only.contains(&key.as_str()) && base["warehouse"]["kind"].as_str() != Some("redshift") {
                continue;
            }
            let mut with = defaults.clone();
            set(&mut with, key, toml_value(key, value));
            let readme = load(&toml::to_string(&with).unwrap());
            assert!(readme == code, "README.md says `{key}` defaults to {value}; the code's default differs");
        }
    }
}

/// `deploy/examples/two-streams.toml`, the README's two-stream node: one stream read by enhanced
/// fan-out, one started at a timestamp, each with its own pipeline, references shared; it loads
/// and `tributary check` accepts it.
#[test]
fn the_two_stream_example_loads_and_passes_check() {
    use tributary::run_config::ConsumerKind;
    let path = repo().join("deploy/examples/two-streams.toml");
    let config = load(&std::fs::read_to_string(&path).unwrap());
    assert!(config.multi_stream);
    let names: Vec<&str> = config.streams.iter().map(|s| s.section.name.as_str()).collect();
    assert_eq!(names, ["ev-sessions", "ticket-cdc"]);
    let (ev, tickets) = (&config.streams[0], &config.streams[1]);
    assert_eq!((ev.section.consumer, tickets.section.consumer), (ConsumerKind::Efo, ConsumerKind::Polling));
    assert_eq!(ev.start, None);
    assert_eq!(tickets.start, Some((proto::Checkpoint::AtTimestamp, Some(1_793_491_200_000))));
    assert_eq!(tickets.pipeline.references.len(), 2, "the shared references reach each stream");
    assert_eq!(
        (ev.pipeline.tables[0].name.as_str(), tickets.pipeline.tables[0].name.as_str()),
        ("ev_charging_sessions", "sport_event_activity")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("reading      by enhanced fan-out (stream consumer tributary-ingest)"), "{text}");
    assert!(text.contains("ticket-cdc (start at at_timestamp 2026-11-01 00:00:00.000 UTC"), "{text}");
}

/// README's pipeline key table lists every key each level of the pipeline reads (top, reference,
/// table, join, column), and its column-type table every type the parser takes.
#[test]
fn the_readme_lists_every_pipeline_key_and_column_type() {
    use worker::pipeline::config::{ColumnConfig, JoinConfig, PipelineConfig, ReferenceConfig, TableConfig};
    use worker::settings::keys;
    let readme = readme();
    let rows = |header: &str| -> Vec<Vec<String>> {
        let start = readme.find(header).unwrap_or_else(|| panic!("README.md: no table {header:?}"));
        readme[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|row| row.split('|').map(|c| c.trim().to_owned()).collect())
            .collect()
    };
    let code = |cell: &str| cell.split('`').nth(1).unwrap_or_default().to_owned();
    let keys_table = rows("| pipeline key | in |");
    for (level, want) in [
        ("top", keys::<PipelineConfig>()),
        ("reference", keys::<ReferenceConfig>()),
        ("table", keys::<TableConfig>()),
        ("join", keys::<JoinConfig>()),
        ("column", keys::<ColumnConfig>()),
    ] {
        let listed: BTreeSet<String> =
            keys_table.iter().filter(|r| r[2].split(' ').next() == Some(level)).map(|r| code(&r[1])).collect();
        let want: BTreeSet<String> = want.iter().map(|k| k.to_string()).collect();
        assert_eq!(listed, want, "README.md's pipeline keys of `{level}`");
    }
    // The parser names every type it takes when it meets one it does not.
    let typed = |ty: &str| {
        let text = format!(
            "[[table]]\nname = \"t\"\nkey = [\"id\"]\ncolumn = [{{ name = \"id\", from = \"id\", type = \"{ty}\" }}]\n"
        );
        PipelineConfig::from_toml(&text).map(|_| ()).map_err(|e| e.to_string())
    };
    let refusal = typed("no-such-type").unwrap_err();
    let taken: BTreeSet<String> =
        refusal.split("expected one of ").nth(1).unwrap_or_default().split(", ").map(code).collect();
    let listed: BTreeSet<String> = rows("| type | PostgreSQL, Redshift |").iter().map(|r| code(&r[1])).collect();
    assert_eq!(listed, taken, "README.md's column types ({refusal})");
    for ty in &listed {
        typed(ty).unwrap();
    }
}
