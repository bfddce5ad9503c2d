//! What the benchmarks share: the process benchmarks' (`latency`, `operations`) pipeline and
//! records, and how every benchmark reads its settings.

// Each benchmark includes this file and uses part of it.
#![allow(dead_code)]

/// One JSON table, `table`, keyed by `id`.
pub fn pipeline(table: &str) -> String {
    format!(
        r#"
format = "json"
[[table]]
name = "{table}"
key = ["id"]
column = [
    {{ name = "id", from = "id", type = "text" }},
    {{ name = "station", from = "station", type = "text" }},
    {{ name = "kwh", from = "kwh", type = "double" }},
    {{ name = "note", from = "note", type = "text" }},
]
"#
    )
}

/// A record of the pipeline, its note `note_len` bytes long (~60 bytes besides).
pub fn record(id: &str, note_len: usize) -> Vec<u8> {
    format!(r#"{{"id":"{id}","station":"2-39-{}","kwh":12.5,"note":"{}"}}"#, id.len(), "x".repeat(note_len))
        .into_bytes()
}

/// A numeric setting from the environment.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
