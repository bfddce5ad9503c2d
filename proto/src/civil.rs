//! Civil (proleptic Gregorian) dates and day counts since 1970-01-01, in both directions: what
//! timestamp parsing, SQL timestamp literals and the generators' ISO text share.

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Appends `YYYY-MM-DD HH:MM:SS.mmm` (UTC) of a time in milliseconds since the epoch; the
/// year must be within 0–9999 (`crate::TIMESTAMP_RANGE` is). Digit by digit rather than through
/// `fmt`: SQL literals call it once per timestamp value.
pub fn push_datetime_ms(ms: i64, out: &mut String) {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let mut text = *b"0000-00-00 00:00:00.000";
    let mut put = |end: usize, width: usize, mut n: i64| {
        for digit in text[end - width..end].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(4, 4, y);
    put(7, 2, m);
    put(10, 2, d);
    put(13, 2, in_day / 3_600_000);
    put(16, 2, in_day / 60_000 % 60);
    put(19, 2, in_day / 1000 % 60);
    put(23, 3, in_day % 1000);
    out.push_str(std::str::from_utf8(&text).expect("ascii digits"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(days_from_civil(1, 1, 1), -719_162);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    proptest::proptest! {
        #[test]
        fn each_is_the_inverse_of_the_other(days in -719_162i64..2_932_897) {
            let (y, m, d) = civil_from_days(days);
            proptest::prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            proptest::prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn datetime_text_matches_formatting(ms in crate::TIMESTAMP_RANGE) {
            let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
            let (y, m, d) = civil_from_days(days);
            let (h, mi, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
            let mut text = String::new();
            push_datetime_ms(ms, &mut text);
            proptest::prop_assert_eq!(text, format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{milli:03}"));
        }
    }
}
