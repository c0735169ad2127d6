//! Durations as Istio YAML writes them: Go-style strings such as `10s`, `1.5s`, `100ms`, `1m30s`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A non-negative duration parsed from an Istio duration string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    pub nanos: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative duration {0:?}")]
    Negative(String),
    #[error(
        "invalid duration {0:?}: expected a number followed by a unit (h, m, s, ms, us, ns), e.g. \"1.5s\""
    )]
    Invalid(String),
}

impl Duration {
    pub const ZERO: Duration = Duration { nanos: 0 };

    pub fn from_secs(secs: u64) -> Self {
        Duration {
            nanos: u128::from(secs) * 1_000_000_000,
        }
    }

    pub fn from_millis(millis: u64) -> Self {
        Duration {
            nanos: u128::from(millis) * 1_000_000,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whole seconds and the nanosecond remainder, as protobuf `Duration` wants them.
    pub fn seconds_and_nanos(&self) -> (i64, i32) {
        let secs = (self.nanos / 1_000_000_000).min(i64::MAX as u128) as i64;
        let nanos = (self.nanos % 1_000_000_000) as i32;
        (secs, nanos)
    }

    /// Parses a Go-style duration: one or more `<decimal><unit>` groups.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        if text.starts_with('-') {
            return Err(DurationError::Negative(text.to_string()));
        }
        let body = text.strip_prefix('+').unwrap_or(text);
        if body == "0" {
            return Ok(Duration::ZERO);
        }
        let invalid = || DurationError::Invalid(text.to_string());
        let mut total: f64 = 0.0;
        let mut rest = body;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            if number_len == 0 {
                return Err(invalid());
            }
            let value: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "h" => 3600e9,
                "m" => 60e9,
                "s" => 1e9,
                "ms" => 1e6,
                "us" | "µs" => 1e3,
                "ns" => 1.0,
                _ => return Err(invalid()),
            };
            rest = &rest[unit_len..];
            total += value * scale;
        }
        Ok(Duration {
            nanos: total.round() as u128,
        })
    }
}

impl fmt::Display for Duration {
    /// Protobuf JSON form (`1.500s`), which Istio also accepts back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = self.seconds_and_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_and_protobuf_forms() {
        assert_eq!(Duration::parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(
            Duration::parse("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            Duration::parse("100ms").unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(Duration::parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(Duration::parse("0").unwrap(), Duration::ZERO);
        assert_eq!(Duration::parse("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn rejects_negative_and_garbage() {
        assert!(matches!(
            Duration::parse("-1s"),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            Duration::parse("10"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            Duration::parse("abc"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(Duration::parse(""), Err(DurationError::Empty)));
    }

    #[test]
    fn displays_as_protobuf_json() {
        assert_eq!(Duration::from_millis(1500).to_string(), "1.5s");
        assert_eq!(Duration::from_secs(3).to_string(), "3s");
    }
}
