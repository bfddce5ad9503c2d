//! Typing: every conversion of a JSON value into a column's SQL value, with one lenient rule
//! set for all of them (numeric strings for numbers, numbers and booleans as text, ISO
//! timestamps) and one error form, `expected <type>, found <what>`.
//!
//! Values arrive in three shapes: raw JSON text from a record (`typed_raw`), a parsed value
//! from a constant or a cached reference row (`Scalar`, `typed`), and a record's metadata
//! (`coerce`).

use super::doc::raw_str;
use crate::reference_cache::RefValue;
use proto::{SqlType, Value};
use serde_json::value::RawValue;
use serde_json::{Number, Value as Json};
use std::borrow::Cow;

/// The error of a value that is not of the column's type.
fn expected(ty: SqlType, found: &str) -> Result<Value, String> {
    Err(format!("expected {}, found {found}", format!("{ty:?}").to_lowercase()))
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fff…][Z]` (UTC) → milliseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let t = text.trim().trim_end_matches('Z');
    let b = t.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let millis = match t.get(19..) {
        Some("") | None => 0,
        Some(f) if f.starts_with('.') && f.len() > 1 && f[1..].bytes().all(|c| c.is_ascii_digit()) => {
            format!("{:0<3}", &f[1..f.len().min(4)]).parse::<i64>().ok()?
        }
        _ => return None,
    };
    Some(((proto::civil::days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + s * 1000 + millis)
}

/// Text as a column of type `ty` (a JSON string, or a key's text).
#[inline]
fn typed_text(s: &str, ty: SqlType) -> Result<Value, String> {
    match ty {
        SqlType::Text => Ok(Value::Text(s.to_owned())),
        SqlType::Boolean if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
        SqlType::Boolean => expected(ty, "a string"),
        SqlType::BigInt => s.trim().parse().map(Value::Int).or_else(|_| expected(ty, "a non-integer string")),
        SqlType::Double => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => expected(ty, "a non-numeric string"),
        },
        SqlType::Timestamp => parse_timestamp(s)
            .map(Value::Timestamp)
            .map_or_else(|| expected(ty, "a string that is not a timestamp"), Ok),
    }
}

/// A JSON value as typing sees it, borrowed from a document, a constant or a cached row.
#[derive(Clone, Copy)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(&'a Number),
    Str(&'a str),
    Array,
    Object,
}

impl<'a> From<&'a Json> for Scalar<'a> {
    fn from(v: &'a Json) -> Self {
        match v {
            Json::Null => Scalar::Null,
            Json::Bool(b) => Scalar::Bool(*b),
            Json::Number(n) => Scalar::Number(n),
            Json::String(s) => Scalar::Str(s),
            Json::Array(_) => Scalar::Array,
            Json::Object(_) => Scalar::Object,
        }
    }
}

impl<'a> From<&'a RefValue> for Scalar<'a> {
    fn from(v: &'a RefValue) -> Self {
        match v {
            RefValue::Null => Scalar::Null,
            RefValue::Bool(b) => Scalar::Bool(*b),
            RefValue::Number(n) => Scalar::Number(n),
            RefValue::Text(s) => Scalar::Str(s),
            RefValue::Nested(v) => Scalar::from(&**v),
        }
    }
}

impl<'a> Scalar<'a> {
    /// The text a reference table is keyed by: strings as they are, numbers in their JSON
    /// form, booleans as `true` / `false`.
    #[inline]
    pub fn key_text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) => Some(Cow::Borrowed(s)),
            Scalar::Number(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            _ => None,
        }
    }
}

/// A parsed JSON value as a column of type `ty`.
#[inline]
pub fn typed(value: Scalar<'_>, ty: SqlType) -> Result<Value, String> {
    match (ty, value) {
        (_, Scalar::Null) => Ok(Value::Null),
        (_, Scalar::Str(s)) => typed_text(s, ty),
        (_, Scalar::Bool(b)) => typed_bool(b, ty),
        (SqlType::Text, Scalar::Number(n)) => Ok(Value::Text(n.to_string())),
        (SqlType::BigInt, Scalar::Number(n)) => {
            n.as_i64().map_or_else(|| expected(ty, "a non-integer number"), |i| Ok(Value::Int(i)))
        }
        (SqlType::Double, Scalar::Number(n)) => Ok(Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        (SqlType::Timestamp, Scalar::Number(n)) => {
            n.as_i64().map_or_else(|| expected(ty, "a non-integer number"), |ms| Ok(Value::Timestamp(ms)))
        }
        (SqlType::Boolean, Scalar::Number(_)) => expected(ty, "a number"),
        (_, Scalar::Array) => expected(ty, "an array"),
        (_, Scalar::Object) => expected(ty, "an object"),
    }
}

#[inline]
fn typed_bool(b: bool, ty: SqlType) -> Result<Value, String> {
    match ty {
        SqlType::Boolean => Ok(Value::Bool(b)),
        SqlType::Text => Ok(Value::Text(b.to_string())),
        _ => expected(ty, "a boolean"),
    }
}

/// A record's raw JSON value as a column of type `ty`: as `typed`, but a number keeps the text
/// it was written with.
#[inline]
pub fn typed_raw(raw: Option<&RawValue>, ty: SqlType) -> Result<Value, String> {
    let Some(raw) = raw else { return Ok(Value::Null) };
    let t = raw.get();
    let first = t.as_bytes().first().copied().unwrap_or(b'n');
    match first {
        b'n' => Ok(Value::Null),
        b'"' => typed_text(&raw_str(raw).ok_or("a malformed string")?, ty),
        b't' | b'f' => typed_bool(first == b't', ty),
        b'{' => expected(ty, "an object"),
        b'[' => expected(ty, "an array"),
        _ => match ty {
            SqlType::Text => Ok(Value::Text(t.to_owned())),
            SqlType::BigInt | SqlType::Timestamp => match t.parse::<i64>() {
                Ok(i) if ty == SqlType::BigInt => Ok(Value::Int(i)),
                Ok(i) => Ok(Value::Timestamp(i)),
                Err(_) => expected(ty, "a non-integer number"),
            },
            SqlType::Double => t.parse::<f64>().map(Value::Float).or_else(|_| expected(ty, "a malformed number")),
            SqlType::Boolean => expected(ty, "a number"),
        },
    }
}

/// A metadata value (`@shard_id`, `@arrival_time`, …) as a column of another type (text takes
/// anything).
#[inline]
pub fn coerce(v: Value, ty: SqlType) -> Result<Value, String> {
    Ok(match (v, ty) {
        (Value::Null, _) => Value::Null,
        (v @ Value::Text(_), SqlType::Text) | (v @ Value::Int(_), SqlType::BigInt) => v,
        (v @ Value::Timestamp(_), SqlType::Timestamp) => v,
        (Value::Int(i), SqlType::Timestamp) => Value::Timestamp(i),
        (Value::Timestamp(i), SqlType::BigInt) => Value::Int(i),
        (Value::Int(i) | Value::Timestamp(i), SqlType::Text) => Value::Text(i.to_string()),
        (Value::Text(s), SqlType::BigInt) => {
            s.parse().map(Value::Int).map_err(|_| format!("{s:?} is not an integer"))?
        }
        (v, ty) => return Err(format!("metadata {v:?} cannot be a {}", format!("{ty:?}").to_lowercase())),
    })
}

/// A typed value a warehouse can hold: timestamps within years 1 to 9999.
#[inline]
pub fn in_range(value: Value) -> Result<Value, String> {
    match value {
        Value::Timestamp(ms) if !proto::TIMESTAMP_RANGE.contains(&ms) => {
            Err(format!("timestamp {ms} ms is outside years 1 to 9999"))
        }
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2018-04-25 11:08:04.5"), Some(1_524_654_484_500));
        assert_eq!(parse_timestamp("2000-02-29T00:00:01.123456Z"), Some(951_782_401_123));
        assert_eq!(parse_timestamp("2000-13-01T00:00:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn lenient_but_checked_types() {
        let json = |v: Json, ty| typed(Scalar::from(&v), ty);
        assert_eq!(json(Json::from("12.5"), SqlType::Double), Ok(Value::Float(12.5)));
        assert_eq!(json(Json::from(7), SqlType::Text), Ok(Value::Text("7".into())));
        assert!(json(Json::from("x"), SqlType::BigInt).unwrap_err().contains("non-integer string"));
        assert!(json(Json::from(1.5), SqlType::BigInt).unwrap_err().contains("non-integer number"));
        assert!(json(serde_json::json!({"a": 1}), SqlType::Text).unwrap_err().contains("an object"));
        assert_eq!(typed(Scalar::Null, SqlType::Text), Ok(Value::Null));
        // Cached reference values type as the JSON they were loaded from.
        let cached = |v: Json, ty| typed(Scalar::from(&RefValue::from(&v)), ty);
        assert_eq!(cached(Json::from("42"), SqlType::BigInt), Ok(Value::Int(42)));
        assert_eq!(cached(Json::from(2.5), SqlType::Double), Ok(Value::Float(2.5)));
        assert_eq!(cached(Json::from(true), SqlType::Text), Ok(Value::Text("true".into())));
        assert!(cached(serde_json::json!([1]), SqlType::Text).unwrap_err().contains("an array"));
    }

    #[test]
    fn raw_values_type_like_parsed_ones_and_keep_their_number_text() {
        let doc =
            super::super::doc::Doc::parse(r#"{"b": 12, "c": {"e": 1}, "f": null, "g": "1.5", "h": 1.50}"#).unwrap();
        assert_eq!(typed_raw(doc.get("b"), SqlType::BigInt), Ok(Value::Int(12)));
        assert_eq!(typed_raw(doc.get("b"), SqlType::Text), Ok(Value::Text("12".into())));
        assert_eq!(typed_raw(doc.get("h"), SqlType::Text), Ok(Value::Text("1.50".into())));
        assert_eq!(typed_raw(doc.get("f"), SqlType::Double), Ok(Value::Null));
        assert_eq!(typed_raw(doc.get("g"), SqlType::Double), Ok(Value::Float(1.5)));
        assert_eq!(typed_raw(doc.get("missing"), SqlType::Text), Ok(Value::Null));
        assert!(typed_raw(doc.get("c"), SqlType::Text).unwrap_err().contains("an object"));
        // The same text typed from a record and from a parsed value: the same value or error.
        for text in
            [r#""12""#, r#""x""#, "true", "false", "7", "-3", "2.5", r#""2024-01-01T00:00:00Z""#, "[1]", "{}", "null"]
        {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            let parsed: Json = serde_json::from_str(text).unwrap();
            for ty in [SqlType::Boolean, SqlType::BigInt, SqlType::Double, SqlType::Text, SqlType::Timestamp] {
                assert_eq!(typed_raw(Some(raw), ty), typed(Scalar::from(&parsed), ty), "{text} as {ty:?}");
            }
        }
    }
}
