//! Kinesis sequence numbers, positions inside KPL aggregates, and row versions.
//!
//! A sequence number is a decimal string of any length (often 56 digits, beyond `u128`), so it is
//! kept as text and ordered by length, then digit by digit.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A Kinesis sequence number: a non-negative decimal integer of any length.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SequenceNumber(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sequence number {0:?}: expected decimal digits")]
pub struct InvalidSequenceNumber(pub String);

impl SequenceNumber {
    /// Parses a decimal string; leading zeros are dropped so ordering stays numeric.
    pub fn parse(text: &str) -> Result<Self, InvalidSequenceNumber> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidSequenceNumber(text.to_owned()));
        }
        let trimmed = text.trim_start_matches('0');
        Ok(Self(if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() }))
    }

    /// Builds a sequence number from an integer (used by the in-memory stream).
    pub fn from_u128(value: u128) -> Self {
        Self(value.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for SequenceNumber {
    type Err = InvalidSequenceNumber;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SequenceNumber {
    type Error = InvalidSequenceNumber;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SequenceNumber> for String {
    fn from(s: SequenceNumber) -> String {
        s.0
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

/// A position in a shard: a sequence number and, inside a KPL aggregate, the index of the user
/// record (KCL's "extended sequence number"). Plain records have sub-sequence 0.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub sequence: SequenceNumber,
    pub sub_sequence: u64,
}

impl Position {
    pub fn new(sequence: SequenceNumber, sub_sequence: u64) -> Self {
        Self { sequence, sub_sequence }
    }

    /// The row version this position gives when the source has no version of its own.
    pub fn version(&self) -> Version {
        Version::from_position(self)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sequence, self.sub_sequence)
    }
}

/// A row version: text whose byte order is the order of the changes it stands for, so the
/// warehouse can compare versions with a plain `>` on a VARCHAR column in any SQL engine.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct Version(std::sync::Arc<str>);

impl Version {
    /// `LLL` (digit count, 3 digits) + the digits + the sub-sequence (20 digits): ordering the
    /// text orders by length, then digits, then sub-sequence.
    pub fn from_position(position: &Position) -> Self {
        let digits = position.sequence.as_str();
        // Built by hand: this runs once per record on the hot path.
        let mut text = String::with_capacity(3 + digits.len() + 20);
        let len = digits.len().min(999);
        text.push(char::from(b'0' + (len / 100) as u8));
        text.push(char::from(b'0' + (len / 10 % 10) as u8));
        text.push(char::from(b'0' + (len % 10) as u8));
        text.push_str(digits);
        let mut n = position.sub_sequence;
        let mut tail = [b'0'; 20];
        for slot in tail.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        text.push_str(std::str::from_utf8(&tail).expect("digits"));
        Self(text.into())
    }

    /// A version given by the source itself, already in an order-preserving text form.
    pub fn from_text(text: impl Into<String>) -> Self {
        Self(text.into().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn big(n: u128, extra_digits: usize) -> String {
        format!("{}{}", n, "0".repeat(extra_digits))
    }

    #[test]
    fn orders_by_length_then_digits() {
        let a = SequenceNumber::parse("9").unwrap();
        let b = SequenceNumber::parse("10").unwrap();
        let c = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").unwrap();
        assert!(a < b && b < c);
        assert_eq!(SequenceNumber::parse("007").unwrap(), SequenceNumber::parse("7").unwrap());
        assert!(SequenceNumber::parse("").is_err());
        assert!(SequenceNumber::parse("12a").is_err());
        assert!(SequenceNumber::parse("-1").is_err());
    }

    proptest! {
        #[test]
        fn order_matches_integer_order(a in any::<u128>(), b in any::<u128>(), pad in 0usize..40) {
            let sa = SequenceNumber::parse(&big(a, pad)).unwrap();
            let sb = SequenceNumber::parse(&big(b, pad)).unwrap();
            // Appending the same zeros multiplies both by 10^pad: the order is the integers'.
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
        }

        #[test]
        fn version_text_order_matches_position_order(
            a in any::<u128>(), b in any::<u128>(), sa in any::<u64>(), sb in any::<u64>()
        ) {
            let pa = Position::new(SequenceNumber::from_u128(a), sa);
            let pb = Position::new(SequenceNumber::from_u128(b), sb);
            prop_assert_eq!(pa.cmp(&pb), pa.version().as_str().cmp(pb.version().as_str()));
        }

        #[test]
        fn leading_zeros_do_not_change_value(a in any::<u128>(), zeros in 0usize..5) {
            let s = format!("{}{}", "0".repeat(zeros), a);
            prop_assert_eq!(SequenceNumber::parse(&s).unwrap(), SequenceNumber::from_u128(a));
        }
    }
}
