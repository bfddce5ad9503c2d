//! Durations as configs write them: humantime's forms (`500ms`, `30s`, `2m`, `1h 30m`), plus a
//! bare number of seconds and a decimal point with no digit on one side (`.5s`), which configs
//! took before.

use serde::{de::Error, Deserialize, Deserializer};
use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = |why: &dyn std::fmt::Display| format!("invalid duration {text:?}: {why} (e.g. 30s, 500ms, 2m)");
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    if unit.is_empty() {
        let seconds: f64 = number.parse().map_err(|e| invalid(&e))?;
        return Duration::try_from_secs_f64(seconds).map_err(|e| invalid(&e));
    }
    // humantime wants digits on both sides of a decimal point; node.toml took `.5s` and `5.s`
    // too. Zeros around the number change no value.
    let padded = if number.contains('.') { format!("0{number}0{unit}") } else { text.to_owned() };
    humantime::parse_duration(&padded).map_err(|e| invalid(&e))
}

/// For `#[serde(deserialize_with = "duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(D::Error::custom)
}

/// For an `Option<Duration>` with `#[serde(default)]`: present is `Some`.
pub fn some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form node.toml took before humantime (the Helm chart's pattern
    /// `^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$`, and a point without digits on one side), and humantime's.
    #[test]
    fn durations_keep_every_form_they_had() {
        let ms = |n| Ok(Duration::from_millis(n));
        for (text, want) in [
            ("500ms", ms(500)),
            ("10s", ms(10_000)),
            ("1m", ms(60_000)),
            ("2h", ms(7_200_000)),
            ("1.5s", ms(1_500)),
            ("0.5m", ms(30_000)),
            ("7", ms(7_000)),
            ("0.25", ms(250)),
            (".5", ms(500)),
            ("0", ms(0)),
            (".5s", ms(500)),
            ("5.s", ms(5_000)),
            ("01.50m", ms(90_000)),
            ("1h 30m", ms(5_400_000)),
            ("1min", ms(60_000)),
        ] {
            assert_eq!(parse(text), want, "{text}");
        }
        for bad in ["", "fast", "3 parsecs", "-1s", "1..5", "."] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid duration {bad:?}")), "{e}");
        }
    }
}
