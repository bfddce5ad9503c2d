//! The one audited place where text enters SQL: [`quote_ident`] puts a name into it, [`sql_literal`]
//! a value and [`values_text`] rows of values (for the Redshift Data API's batches, which take no
//! parameters). Every other statement is built from what these return; values otherwise travel
//! as bound parameters, never in the SQL text.

/// SQL that cannot be written: a name or value it cannot hold, or a schema it cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("invalid sql identifier {0:?}: empty or containing NUL")]
    BadIdentifier(String),
    #[error("value cannot be written as sql: {0}")]
    BadValue(String),
    #[error("invalid schema for table {table:?}: {reason}")]
    BadSchema { table: String, reason: String },
}

/// SQL that cannot be written will not be written on a retry either.
impl From<SqlError> for proto::WarehouseError {
    fn from(e: SqlError) -> Self {
        proto::WarehouseError::Rejected(e.to_string())
    }
}

/// The one function that puts a name into SQL: double quotes, embedded quotes doubled.
pub fn quote_ident(name: &str) -> Result<String, SqlError> {
    if name.is_empty() || name.contains('\0') {
        return Err(SqlError::BadIdentifier(name.to_owned()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// The one function that puts a value into SQL text (for the Redshift Data API's batches, which
/// take no parameters): NULL, TRUE/FALSE, integers, finite floats, timestamps of years 1–9999
/// as absolute `TIMESTAMP '…'` literals, and strings single-quoted with quotes and backslashes
/// doubled. Redshift reads a backslash in a string literal as an escape (as PostgreSQL does with
/// `standard_conforming_strings = off`), so an undoubled one could swallow the closing quote;
/// doubled, the text reads back exactly. NUL, which neither engine can store, is refused. On
/// `Err`, `out` may hold part of the literal: the caller discards it.
pub fn sql_literal(value: &proto::Value, out: &mut String) -> Result<(), SqlError> {
    use std::fmt::Write;
    match value {
        proto::Value::Null => out.push_str("NULL"),
        proto::Value::Bool(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
        proto::Value::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
        // The shortest text that reads back as the same double. A bare literal is read as
        // NUMERIC first, which has no -0 and, on Redshift, only 38 digits: exponents and -0 go
        // through a cast from text, which reads them as a double directly.
        proto::Value::Float(f) => {
            let mut buffer = ryu::Buffer::new();
            let text = buffer.format_finite(finite(*f)?);
            if text.contains('e') || text == "-0.0" {
                let _ = write!(out, "CAST('{text}' AS DOUBLE PRECISION)");
            } else {
                out.push_str(text);
            }
        }
        proto::Value::Timestamp(ms) => {
            // An absolute literal: an interval of whole seconds overflows 32 bits past 2038
            // on Redshift and on PostgreSQL before 15.
            out.push_str("TIMESTAMP '");
            proto::civil::push_datetime_ms(in_years_1_to_9999(*ms)?, out);
            out.push('\'');
        }
        proto::Value::Text(s) => {
            out.reserve(s.len() + 2);
            out.push('\'');
            let mut rest = s.as_str();
            // One vectorized scan finds what needs doubling and what is refused.
            while let Some(i) = memchr::memchr3(b'\'', b'\\', 0, rest.as_bytes()) {
                if rest.as_bytes()[i] == 0 {
                    return Err(nul_refused());
                }
                out.push_str(&rest[..=i]);
                out.push_str(&rest[i..=i]);
                rest = &rest[i + 1..];
            }
            out.push_str(rest);
            out.push('\'');
        }
    }
    Ok(())
}

/// A double either engine can hold: finite (the SQL text and the COPY file alike).
pub(crate) fn finite(f: f64) -> Result<f64, SqlError> {
    if f.is_finite() {
        Ok(f)
    } else {
        Err(SqlError::BadValue(format!("{f} is not a finite number")))
    }
}

/// A timestamp either engine can hold: years 1 to 9999 (the SQL text and the COPY file alike).
pub(crate) fn in_years_1_to_9999(ms: i64) -> Result<i64, SqlError> {
    if proto::TIMESTAMP_RANGE.contains(&ms) {
        Ok(ms)
    } else {
        Err(SqlError::BadValue(format!("timestamp {ms} ms is outside years 1 to 9999")))
    }
}

/// Refusal of text holding NUL, which neither engine can store.
pub(crate) fn nul_refused() -> SqlError {
    SqlError::BadValue("text holds a NUL character".into())
}

/// `(v, v, …), (v, v, …)` for rows given as value slices: the literal form of a stage insert.
pub fn values_text<'a>(rows: impl IntoIterator<Item = &'a [proto::Value]>, out: &mut String) -> Result<(), SqlError> {
    for (i, row) in rows.into_iter().enumerate() {
        out.push_str(if i == 0 { "(" } else { ", (" });
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            sql_literal(v, out)?;
        }
        out.push(')');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_once_and_safely() {
        assert_eq!(quote_ident("kWhDelivered").unwrap(), "\"kWhDelivered\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_ident("x\"; DROP TABLE t; --").unwrap(), "\"x\"\"; DROP TABLE t; --\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
    }

    #[test]
    fn literals_are_escaped_by_one_function() {
        use proto::Value;
        let mut out = String::new();
        let row = [
            Value::Null,
            Value::Bool(true),
            Value::Int(-7),
            Value::Float(0.1),
            Value::Text("it's'; DROP TABLE t; --\\".into()),
            Value::Timestamp(1_500),
        ];
        values_text([&row[..], &row[..1]], &mut out).unwrap();
        assert_eq!(
            out,
            "(NULL, TRUE, -7, 0.1, 'it''s''; DROP TABLE t; --\\\\', TIMESTAMP '1970-01-01 00:00:01.500'), (NULL)"
        );
        let mut before_epoch = String::new();
        sql_literal(&Value::Timestamp(-1_500), &mut before_epoch).unwrap();
        assert_eq!(before_epoch, "TIMESTAMP '1969-12-31 23:59:58.500'");
        for (ms, text) in [
            (2_147_483_648_000, "TIMESTAMP '2038-01-19 03:14:08.000'"),
            (951_782_401_123, "TIMESTAMP '2000-02-29 00:00:01.123'"),
            (*proto::TIMESTAMP_RANGE.start(), "TIMESTAMP '0001-01-01 00:00:00.000'"),
            (*proto::TIMESTAMP_RANGE.end(), "TIMESTAMP '9999-12-31 23:59:59.999'"),
        ] {
            let mut out = String::new();
            sql_literal(&Value::Timestamp(ms), &mut out).unwrap();
            assert_eq!(out, text);
        }
        assert!(sql_literal(&Value::Timestamp(proto::TIMESTAMP_RANGE.end() + 1), &mut String::new()).is_err());
        assert!(sql_literal(&Value::Text("a\0b".into()), &mut String::new()).is_err());
        assert!(sql_literal(&Value::Float(f64::NAN), &mut String::new()).is_err());
        let mut small = String::new();
        sql_literal(&Value::Float(1e-7), &mut small).unwrap();
        assert_eq!(small, "CAST('1e-7' AS DOUBLE PRECISION)");
    }

    proptest::proptest! {
        /// Every literal reads back as its value: text with each quote and backslash doubled
        /// (nothing else touched), numbers and timestamps exactly.
        #[test]
        fn literals_read_back(text in "[a-z'\\\\é\\n ]{0,40}", f in proptest::num::f64::NORMAL, ms in proptest::num::i64::ANY) {
            use proto::Value;
            let mut out = String::new();
            sql_literal(&Value::Text(text.clone()), &mut out).unwrap();
            let inner = &out[1..out.len() - 1];
            proptest::prop_assert_eq!(inner.replace("''", "'").replace("\\\\", "\\"), text.clone());
            proptest::prop_assert_eq!(inner.matches('\'').count() % 2, 0);
            out.clear();
            sql_literal(&Value::Float(f), &mut out).unwrap();
            let number = out.trim_start_matches("CAST('").trim_end_matches("' AS DOUBLE PRECISION)");
            proptest::prop_assert_eq!(number.parse::<f64>().unwrap(), f);
            out.clear();
            let ms = ms.rem_euclid(proto::TIMESTAMP_RANGE.end() - proto::TIMESTAMP_RANGE.start()) + proto::TIMESTAMP_RANGE.start();
            sql_literal(&Value::Timestamp(ms), &mut out).unwrap();
            let t = out.trim_start_matches("TIMESTAMP '").trim_end_matches('\'');
            let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
            let days = proto::civil::days_from_civil(num(0..4), num(5..7), num(8..10));
            let back = days * 86_400_000 + num(11..13) * 3_600_000 + num(14..16) * 60_000 + num(17..19) * 1000 + num(20..23);
            proptest::prop_assert_eq!(back, ms);
        }
    }
}
