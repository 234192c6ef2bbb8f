//! Human durations as written in manifests: `30s`, `15m`, `1h`, `90d`, `1h30m`.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the API server checks before the webhook sees the object.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}(s|m|h|d))+$";

/// A span of time written as one or more `<integer><unit>` parts, with units
/// `s`, `m`, `h` and `d` (24 hours). Stored to the second.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(u64);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration: expected e.g. 15m, 1h or 90d")]
    Empty,
    /// A part had no number before its unit.
    #[error("invalid duration {0:?}: each part must be a number followed by s, m, h or d (e.g. 15m, 1h30m)")]
    Syntax(String),
    /// A unit letter other than s, m, h, d.
    #[error("invalid duration {input:?}: unknown unit {unit:?}; use s, m, h or d")]
    Unit {
        /// The whole input.
        input: String,
        /// The offending unit.
        unit: char,
    },
    /// The value does not fit.
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }

    /// A duration of `mins` minutes.
    pub const fn from_mins(mins: u64) -> Self {
        Self(mins * 60)
    }

    /// A duration of `hours` hours.
    pub const fn from_hours(hours: u64) -> Self {
        Self(hours * 3600)
    }

    /// Whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// Whole seconds as a signed number, for arithmetic on unix timestamps.
    pub fn as_secs_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// As a standard library duration.
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(DurationError::Empty);
        }
        let mut total: u64 = 0;
        let mut number: Option<u64> = None;
        for c in input.chars() {
            if let Some(d) = c.to_digit(10) {
                let n = number.unwrap_or(0);
                number = Some(
                    n.checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d)))
                        .ok_or_else(|| DurationError::Overflow(input.to_string()))?,
                );
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                c if c.is_ascii_alphabetic() => return Err(DurationError::Unit { input: input.to_string(), unit: c }),
                _ => return Err(DurationError::Syntax(input.to_string())),
            };
            let n = number.take().ok_or_else(|| DurationError::Syntax(input.to_string()))?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| DurationError::Overflow(input.to_string()))?;
        }
        if number.is_some() {
            // A trailing number without a unit ("15") is ambiguous: refuse it.
            return Err(DurationError::Syntax(input.to_string()));
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, secs) in [('d', 86_400), ('h', 3600), ('m', 60), ('s', 1)] {
            if rest >= secs {
                write!(f, "{}{}", rest / secs, unit)?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({self})")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("30s".parse::<Duration>().unwrap().as_secs(), 30);
        assert_eq!("15m".parse::<Duration>().unwrap().as_secs(), 900);
        assert_eq!("1h".parse::<Duration>().unwrap().as_secs(), 3600);
        assert_eq!("90d".parse::<Duration>().unwrap().as_secs(), 90 * 86_400);
        assert_eq!("1h30m".parse::<Duration>().unwrap().as_secs(), 5400);
    }

    #[test]
    fn refuses_bad_durations_with_a_reason() {
        assert_eq!("".parse::<Duration>(), Err(DurationError::Empty));
        assert!(matches!("15".parse::<Duration>(), Err(DurationError::Syntax(_))));
        assert!(matches!("m".parse::<Duration>(), Err(DurationError::Syntax(_))));
        assert!(matches!("-5m".parse::<Duration>(), Err(DurationError::Syntax(_))));
        assert!(matches!("5w".parse::<Duration>(), Err(DurationError::Unit { unit: 'w', .. })));
        assert!(matches!("99999999999999999999d".parse::<Duration>(), Err(DurationError::Overflow(_))));
        let msg = "5x".parse::<Duration>().unwrap_err().to_string();
        assert!(msg.contains("unknown unit") && msg.contains("5x"), "{msg}");
    }

    #[test]
    fn serde_round_trip_uses_the_string_form() {
        let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert!(serde_json::from_str::<Duration>("\"soon\"").is_err());
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(secs in 0u64..10_000_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<Duration>();
        }
    }
}
