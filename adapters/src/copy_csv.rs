//! A batch's stage rows as the file Redshift's `COPY … FORMAT AS CSV GZIP` loads from S3 (the
//! bulk path, as AWS Glue and Firehose load Redshift), and that `COPY` statement. CSV, not
//! Parquet: Parquet maps columns by position and has no writer among this project's crates;
//! gzip keeps the file about a sixth of its size, and COPY reads it as it is.
//!
//! The file's fields, in the stage's column order (`merge_sql::stage_row`): NULL as the
//! unquoted marker `\N` (COPY's `NULL AS`); booleans `t`/`f`; integers and the shortest text of
//! each double that reads back as the same double; timestamps `YYYY-MM-DD HH:MM:SS.mmm` (UTC,
//! years 1–9999, read by `TIMEFORMAT 'YYYY-MM-DD HH:MI:SS'`, whose seconds take fractions);
//! text always double-quoted, a quote doubled. In CSV mode a backslash is an ordinary
//! character, so text needs no other escape; a quoted field may hold commas and newlines. Text
//! equal to the marker is refused (whether COPY reads a quoted marker as NULL is not
//! documented), as are NUL, which Redshift cannot store, and non-finite doubles: such a batch
//! goes by statements instead.

use crate::merge_sql::{stage_row, MergeSql};
use crate::sql_text::{finite, in_years_1_to_9999, nul_refused, sql_literal, SqlError};
use flate2::write::GzEncoder;
use flate2::Compression;
use proto::{Row, Value};
use std::io::Write;

/// The text of a NULL field, unquoted (COPY's `NULL AS`).
pub const NULL_MARKER: &str = "\\N";

/// One field's CSV text into `out`. On `Err`, `out` may hold part of the field.
pub fn csv_field(value: &Value, out: &mut Vec<u8>) -> Result<(), SqlError> {
    match value {
        Value::Null => out.extend_from_slice(NULL_MARKER.as_bytes()),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::Float(f) => out.extend_from_slice(ryu::Buffer::new().format_finite(finite(*f)?).as_bytes()),
        Value::Timestamp(ms) => {
            let mut text = String::with_capacity(23);
            proto::civil::push_datetime_ms(in_years_1_to_9999(*ms)?, &mut text);
            out.extend_from_slice(text.as_bytes());
        }
        Value::Text(s) => {
            if s.as_str() == NULL_MARKER {
                return Err(SqlError::BadValue(format!("text equal to the null marker {NULL_MARKER:?}")));
            }
            out.push(b'"');
            let mut rest = s.as_bytes();
            while let Some(i) = memchr::memchr2(b'"', 0, rest) {
                if rest[i] == 0 {
                    return Err(nul_refused());
                }
                out.extend_from_slice(&rest[..=i]);
                out.push(b'"');
                rest = &rest[i + 1..];
            }
            out.extend_from_slice(rest);
            out.push(b'"');
        }
    }
    Ok(())
}

/// The rows as the stage's CSV lines (each ends in `\n`), uncompressed.
pub fn stage_csv(rows: &[Row]) -> Result<Vec<u8>, SqlError> {
    let mut out = Vec::with_capacity(rows.len() * 128);
    for (ord, row) in rows.iter().enumerate() {
        for (i, value) in stage_row(row, ord).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            csv_field(&value, &mut out)?;
        }
        out.push(b'\n');
    }
    Ok(out)
}

/// The rows as the gzip-compressed CSV file COPY loads.
pub fn stage_csv_gz(rows: &[Row]) -> Result<Vec<u8>, SqlError> {
    let csv = stage_csv(rows)?;
    let mut gz = GzEncoder::new(Vec::with_capacity(csv.len() / 4), Compression::fast());
    gz.write_all(&csv).and_then(|()| gz.finish()).map_err(|e| SqlError::BadValue(format!("gzip: {e}")))
}

impl MergeSql {
    /// `COPY` of the stage from the file at `url` (`s3://bucket/key`: COPY loads every object
    /// whose key starts with it, so keys must not prefix each other), read with `role` (an IAM
    /// role ARN, or `default`: the cluster's default role). Statistics and compression analysis
    /// are off, as for any staging table.
    pub fn copy_stage_from(&self, url: &str, role: &str) -> Result<String, SqlError> {
        let quoted = |text: &str| {
            let mut out = String::new();
            sql_literal(&Value::Text(text.into()), &mut out).map(|()| out)
        };
        let (source, null) = (quoted(url)?, quoted(NULL_MARKER)?);
        let role = if role == "default" { role.to_owned() } else { quoted(role)? };
        Ok(format!(
            "COPY {} ({}) FROM {source} IAM_ROLE {role} FORMAT AS CSV GZIP NULL AS {null} \
             TIMEFORMAT 'YYYY-MM-DD HH:MI:SS' COMPUPDATE OFF STATUPDATE OFF",
            self.stage_name(),
            self.stage_columns().join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;
    use crate::warehouse_ddl::tests::sample;
    use proto::{RowOp, Version};

    fn text(row: &[Value]) -> String {
        let mut out = Vec::new();
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            csv_field(v, &mut out).unwrap();
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_are_written_as_copy_reads_them() {
        let row = [
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-7),
            Value::Float(0.1),
            Value::Float(-0.0),
            Value::Float(1e300),
            Value::Timestamp(-1_500),
            Value::Text("a \"quoted\", back\\slash\nnew line".into()),
            Value::Text(String::new()),
        ];
        assert_eq!(
            text(&row),
            "\\N,t,f,-7,0.1,-0.0,1e300,1969-12-31 23:59:58.500,\"a \"\"quoted\"\", back\\slash\nnew line\",\"\""
        );
        let mut out = Vec::new();
        for refused in [
            Value::Text("\\N".into()),
            Value::Text("a\0b".into()),
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Timestamp(*proto::TIMESTAMP_RANGE.end() + 1),
        ] {
            assert!(csv_field(&refused, &mut out).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn the_file_is_the_stage_rows_gzipped_and_the_copy_names_it_quoted() {
        use std::io::Read;
        let row = |op, id: &str| Row {
            op,
            version: Version::from_text("v1"),
            values: vec![
                Value::Text(id.into()),
                Value::Int(1),
                Value::Float(2.5),
                Value::Bool(true),
                Value::Timestamp(0),
            ],
        };
        let rows = [row(RowOp::Upsert, "a"), row(RowOp::Delete, "b")];
        let gz = stage_csv_gz(&rows).unwrap();
        let mut csv = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut csv).unwrap();
        assert_eq!(
            csv,
            "\"a\",1,2.5,t,1970-01-01 00:00:00.000,\"v1\",\"U\",0\n\"b\",1,2.5,t,1970-01-01 00:00:00.000,\"v1\",\"D\",1\n"
        );
        let sql = MergeSql::new(&sample(), Dialect::Redshift).unwrap();
        let copy = sql.copy_stage_from("s3://bucket/it's/k.csv.gz", "arn:aws:iam::1:role/r").unwrap();
        assert_eq!(
            copy,
            "COPY \"charge \"\"sessions\"\"__stage\" (\"site\", \"n\", \"kwh\", \"ok\", \"at\", \"_version\", \"_op\", \
             \"_ord\") FROM 's3://bucket/it''s/k.csv.gz' IAM_ROLE 'arn:aws:iam::1:role/r' FORMAT AS CSV GZIP \
             NULL AS '\\\\N' TIMEFORMAT 'YYYY-MM-DD HH:MI:SS' COMPUPDATE OFF STATUPDATE OFF"
        );
        assert!(sql.copy_stage_from("s3://b/k", "default").unwrap().contains(" IAM_ROLE default "));
    }
}
