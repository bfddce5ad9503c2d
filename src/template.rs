//! Record templates for `tributary gen --template FILE`, in the Kinesis Data Generator's style:
//! any text with `{{…}}` placeholders, each replaced by a fresh random value per record.
//!
//! | placeholder | value |
//! |---|---|
//! | `{{random.number(MAX)}}`, `{{random.number(MIN, MAX)}}`, `{{random.number({"min": 1, "max": 9})}}` | an integer in [MIN, MAX] (MIN defaults to 0) |
//! | `{{random.float(MIN, MAX)}}`, `{{random.float(MIN, MAX, DECIMALS)}}` | a number with DECIMALS (default 2) digits |
//! | `{{random.arrayElement(["a", "b"])}}` | one of the elements (strings without quotes) |
//! | `{{random.boolean}}` | `true` or `false` |
//! | `{{random.uuid}}` | a version-4 UUID |
//! | `{{random.alphaNumeric(N)}}` | N letters and digits |
//! | `{{date.now}}` | the current UTC time, `2026-11-23T08:30:00.123Z` |
//! | `{{date.epoch_ms}}` | the current time in milliseconds since the epoch |
//! | `{{seq}}` | 1, 2, 3, … (per template) |
//!
//! Arguments are JSON values. A template is checked when it is read: an unknown placeholder or a
//! bad argument fails at start with the placeholder and its line.

use rand::Rng;
use serde_json::Value as Json;

#[derive(Clone, Debug, PartialEq)]
enum Field {
    Int { min: i64, max: i64 },
    Float { min: f64, max: f64, decimals: usize },
    Element(Vec<String>),
    Boolean,
    Uuid,
    AlphaNumeric(usize),
    Now,
    EpochMs,
    Seq,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
    seq: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("template line {line}: {{{{{placeholder}}}}}: {reason}")]
pub struct TemplateError {
    pub line: usize,
    pub placeholder: String,
    pub reason: String,
}

fn int(v: &Json) -> Option<i64> {
    v.as_i64()
}

fn field(name: &str, args: &[Json]) -> Result<Field, String> {
    let numbers = || args.iter().map(Json::as_f64).collect::<Option<Vec<f64>>>().ok_or("arguments must be numbers");
    Ok(match (name, args) {
        ("random.number", [Json::Object(o)]) => {
            let get = |k: &str| o.get(k).map(|v| int(v).ok_or(format!("{k} must be an integer"))).transpose();
            Field::Int { min: get("min")?.unwrap_or(0), max: get("max")?.unwrap_or(i64::from(i32::MAX)) }
        }
        ("random.number", [max]) => Field::Int { min: 0, max: int(max).ok_or("max must be an integer")? },
        ("random.number", [min, max]) => Field::Int {
            min: int(min).ok_or("min must be an integer")?,
            max: int(max).ok_or("max must be an integer")?,
        },
        ("random.float", [_, _] | [_, _, _]) => {
            let n = numbers()?;
            let decimals = n.get(2).map_or(2, |d| *d as usize).min(12);
            Field::Float { min: n[0], max: n[1], decimals }
        }
        ("random.arrayElement", [Json::Array(items)]) if !items.is_empty() => Field::Element(
            items.iter().map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).collect(),
        ),
        ("random.arrayElement", _) => return Err("takes one non-empty array".into()),
        ("random.boolean", []) => Field::Boolean,
        ("random.uuid", []) => Field::Uuid,
        ("random.alphaNumeric", [n]) => {
            Field::AlphaNumeric(n.as_u64().filter(|n| *n <= 4096).ok_or("length must be 0..=4096")? as usize)
        }
        ("date.now", []) => Field::Now,
        ("date.epoch_ms", []) => Field::EpochMs,
        ("seq", []) => Field::Seq,
        ("random.number" | "random.float" | "random.boolean" | "random.uuid" | "random.alphaNumeric", _)
        | ("date.now" | "date.epoch_ms" | "seq", _) => return Err("wrong arguments".into()),
        _ => return Err("unknown placeholder".into()),
    })
    .and_then(|f| match f {
        Field::Int { min, max } if min > max => Err("min is above max".into()),
        Field::Float { min, max, .. } if min > max => Err("min is above max".into()),
        Field::Float { min, max, .. } if !(max - min).is_finite() => Err("the range is too wide for a double".into()),
        f => Ok(f),
    })
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let line_of = |at: &str| text[..text.len() - at.len()].matches('\n').count() + 1;
        while let Some(open) = rest.find("{{") {
            let Some(close) = rest[open..].find("}}") else {
                return Err(TemplateError {
                    line: line_of(&rest[open..]),
                    placeholder: rest[open + 2..].chars().take(30).collect(),
                    reason: "no closing }}".into(),
                });
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let inner = rest[open + 2..open + close].trim();
            let error =
                |reason: String| TemplateError { line: line_of(&rest[open..]), placeholder: inner.to_owned(), reason };
            let (name, args) = match inner.split_once('(') {
                Some((name, args)) => {
                    let args = args.strip_suffix(')').ok_or_else(|| error("no closing parenthesis".into()))?;
                    let args: Vec<Json> = serde_json::from_str(&format!("[{args}]"))
                        .map_err(|e| error(format!("arguments are not json: {e}")))?;
                    (name.trim(), args)
                }
                None => (inner, Vec::new()),
            };
            parts.push(Part::Field(field(name, &args).map_err(error)?));
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts, seq: 0 })
    }

    /// One record: every placeholder drawn afresh.
    pub fn render(&mut self, rng: &mut impl Rng, now_ms: i64) -> String {
        use std::fmt::Write;
        self.seq += 1;
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match f {
                    Field::Int { min, max } => {
                        let _ = write!(out, "{}", rng.gen_range(*min..=*max));
                    }
                    Field::Float { min, max, decimals } => {
                        let v = if min == max { *min } else { rng.gen_range(*min..*max) };
                        let _ = write!(out, "{v:.decimals$}");
                    }
                    Field::Element(items) => out.push_str(&items[rng.gen_range(0..items.len())]),
                    Field::Boolean => out.push_str(if rng.gen() { "true" } else { "false" }),
                    Field::Uuid => {
                        let mut b: [u8; 16] = rng.gen();
                        b[6] = (b[6] & 0x0f) | 0x40;
                        b[8] = (b[8] & 0x3f) | 0x80;
                        for (i, byte) in b.iter().enumerate() {
                            if matches!(i, 4 | 6 | 8 | 10) {
                                out.push('-');
                            }
                            let _ = write!(out, "{byte:02x}");
                        }
                    }
                    Field::AlphaNumeric(n) => {
                        out.extend((0..*n).map(|_| char::from(rng.sample(rand::distributions::Alphanumeric))))
                    }
                    Field::Now => out.push_str(&testkit::tickets::iso(now_ms)),
                    Field::EpochMs => {
                        let _ = write!(out, "{now_ms}");
                    }
                    Field::Seq => {
                        let _ = write!(out, "{}", self.seq);
                    }
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn renders_every_placeholder_within_its_bounds() {
        let mut t = Template::parse(
            r#"{"id": "{{random.uuid}}", "n": {{random.number(5, 7)}}, "m": {{random.number({"min": 1, "max": 2})}},
"kwh": {{random.float(0.5, 1.5, 3)}}, "city": "{{random.arrayElement(["Pasadena", "San Jose"])}}",
"ok": {{random.boolean}}, "code": "{{random.alphaNumeric(6)}}", "at": "{{date.now}}", "ms": {{date.epoch_ms}}, "seq": {{seq}}}"#,
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for i in 1..=200 {
            let v: Json = serde_json::from_str(&t.render(&mut rng, 1_524_654_484_500)).expect("valid json");
            let id = v["id"].as_str().unwrap();
            assert!(id.len() == 36 && id.as_bytes()[14] == b'4', "{id}");
            assert!((5..=7).contains(&v["n"].as_i64().unwrap()));
            assert!((1..=2).contains(&v["m"].as_i64().unwrap()));
            let kwh = v["kwh"].as_f64().unwrap();
            assert!((0.5..=1.5).contains(&kwh));
            assert!(["Pasadena", "San Jose"].contains(&v["city"].as_str().unwrap()));
            assert!(v["ok"].is_boolean());
            assert!(v["code"].as_str().unwrap().chars().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(v["at"], "2018-04-25T11:08:04.500Z");
            assert_eq!(v["ms"], 1_524_654_484_500i64);
            assert_eq!(v["seq"], i);
        }
    }

    #[test]
    fn bad_placeholders_fail_with_their_line() {
        let e = Template::parse("{\n \"a\": {{random.nmber(3)}}\n}").unwrap_err();
        assert_eq!((e.line, e.placeholder.as_str(), e.reason.as_str()), (2, "random.nmber(3)", "unknown placeholder"));
        assert_eq!(e.to_string(), "template line 2: {{random.nmber(3)}}: unknown placeholder");
        assert!(Template::parse("{{random.number(9, 1)}}").unwrap_err().reason.contains("above"));
        assert!(Template::parse("{{random.arrayElement([])}}").is_err());
        assert!(Template::parse("{{random.float(-1e308, 1e308)}}").unwrap_err().reason.contains("too wide"));
        assert!(Template::parse("{{random.number(x)}}").unwrap_err().reason.contains("json"));
        assert!(Template::parse("text {{seq").unwrap_err().reason.contains("closing"));
        assert_eq!(
            Template::parse("no placeholders").unwrap().render(&mut ChaCha8Rng::seed_from_u64(1), 0),
            "no placeholders"
        );
    }
}
