//! tributary's Grafana dashboard (`deploy/grafana/tributary.json`) as tests see it: the JSON, its
//! panels, each panel's PromQL with the dashboard's variables substituted, and a small PromQL
//! scanner that finds the selectors of an expression (metric, matchers, range, enclosing
//! function) for the dashboard's lint rules.
// Each test crate uses part of it.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;

/// What `$__rate_interval` becomes in `queries`: Grafana makes it at least four scrape intervals;
/// one minute suits a scrape interval up to 15 s.
pub const RATE_INTERVAL: &str = "1m";

pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/tributary.json")
}

/// The dashboard as it ships.
pub fn dashboard() -> Value {
    let text = std::fs::read_to_string(path()).expect("deploy/grafana/tributary.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("deploy/grafana/tributary.json is not JSON: {e}"))
}

/// Every panel of `dashboard`, rows included, and the panels of collapsed rows after their row.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panels list") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// (panel title, PromQL as written) of every target of every panel.
pub fn raw_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((title.to_owned(), target["expr"].as_str().unwrap_or_default().to_owned()));
        }
    }
    out
}

/// `expr` as Grafana would send it to Prometheus with `job` selected: `$job` → `job`,
/// `$__rate_interval` → `RATE_INTERVAL`. `job` goes into a regex matcher unescaped.
pub fn substitute(expr: &str, job: &str) -> String {
    let out = expr
        .replace("${__rate_interval}", RATE_INTERVAL)
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${job}", job)
        .replace("$job", job);
    assert!(!out.contains('$'), "a variable the tests do not substitute in {expr}");
    out
}

/// (panel title, PromQL) of every target, with the variables substituted for Prometheus.
pub fn queries(job: &str) -> Vec<(String, String)> {
    raw_queries(&dashboard()).into_iter().map(|(title, expr)| (title, substitute(&expr, job))).collect()
}

/// One vector selector of an expression: `metric{matchers}[range]`, and the function or aggregation
/// whose direct argument it is (`rate` in `rate(m[5m])`).
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub metric: String,
    /// The text between the braces, if any.
    pub matchers: Option<String>,
    /// The text between the brackets, if any.
    pub range: Option<String>,
    pub function: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str,
    Number,
    Braces(String),
    Brackets(String),
    Punct(char),
}

/// PromQL aggregations: `sum by (x) (…)` opens its parenthesis after the `by` clause.
const AGGREGATIONS: &str =
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio";

/// Other PromQL words that are not metric names: modifiers, binary operators, constants.
const KEYWORDS: &str = "by without on ignoring group_left group_right bool offset and or unless atan2 inf nan";

/// Words followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

fn skip_string(chars: &[char], mut i: usize) -> Result<usize, String> {
    let quote = chars[i];
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err("an unterminated string".into())
}

fn tokens(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i)?;
            out.push(Token::Str);
        } else if c == '{' || c == '[' {
            let close = if c == '{' { '}' } else { ']' };
            let start = i + 1;
            i = start;
            while i < chars.len() && chars[i] != close {
                i = if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                    skip_string(&chars, i)?
                } else {
                    i + 1
                };
            }
            if i == chars.len() {
                return Err(format!("an unclosed {c}"));
            }
            let inner: String = chars[start..i].iter().collect();
            out.push(if c == '{' { Token::Braces(inner) } else { Token::Brackets(inner) });
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Number);
        } else if "()+-*/%^=!<>,".contains(c) {
            out.push(Token::Punct(c));
            i += 1;
        } else {
            return Err(format!("an unexpected {c:?} (a variable outside a string or a range?)"));
        }
    }
    Ok(out)
}

/// The vector selectors of `expr`, in order. Fails on what it cannot read: a selector without a
/// metric name (`{__name__=…}`), a `$` outside strings and ranges, an unbalanced bracket.
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let tokens = tokens(expr)?;
    let mut out = Vec::new();
    // The function (or aggregation) each open parenthesis belongs to; None for grouping.
    let mut open: Vec<Option<String>> = Vec::new();
    // An aggregation whose `(` comes after a `by (…)` clause: `sum by (x) (…)`.
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            // Skip `by (a, b)`: label names, not metrics.
            Token::Ident(word)
                if LABEL_LISTS.contains(&word.as_str()) && tokens.get(i + 1) == Some(&Token::Punct('(')) =>
            {
                let close = tokens[i..].iter().position(|t| *t == Token::Punct(')')).ok_or("an unclosed (")?;
                i += close;
            }
            Token::Ident(word) if tokens.get(i + 1) == Some(&Token::Punct('(')) => {
                open.push(Some(word.clone()));
                pending = None;
                i += 1;
            }
            Token::Ident(word) if AGGREGATIONS.split_whitespace().any(|w| w == word) => pending = Some(word.clone()),
            Token::Ident(word) if KEYWORDS.split_whitespace().any(|w| w == word) => {}
            Token::Ident(metric) => {
                let mut selector = Selector {
                    metric: metric.clone(),
                    matchers: None,
                    range: None,
                    function: open.last().cloned().flatten(),
                };
                if let Some(Token::Braces(m)) = tokens.get(i + 1) {
                    selector.matchers = Some(m.clone());
                    i += 1;
                }
                if let Some(Token::Brackets(r)) = tokens.get(i + 1) {
                    selector.range = Some(r.clone());
                    i += 1;
                }
                out.push(selector);
            }
            Token::Braces(m) => return Err(format!("a selector without a metric name: {{{m}}}")),
            Token::Brackets(r) => return Err(format!("a range [{r}] that follows no selector (a subquery?)")),
            Token::Punct('(') => open.push(pending.take()),
            Token::Punct(')') => {
                open.pop().ok_or("an unbalanced )")?;
            }
            _ => {}
        }
        i += 1;
    }
    if !open.is_empty() {
        return Err("an unclosed (".into());
    }
    Ok(out)
}
