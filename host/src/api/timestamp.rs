//! Timestamps as the API writes them: RFC 3339 in UTC with milliseconds and
//! a `Z`, such as `2026-03-01T12:00:00.000Z`.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// From milliseconds since the Unix epoch; out-of-range values become the epoch.
    pub fn from_ms(ms: i64) -> Timestamp {
        Timestamp(Utc.timestamp_millis_opt(ms).single().unwrap_or_default())
    }

    pub fn as_ms(self) -> i64 {
        self.0.timestamp_millis()
    }

    /// Returns the Unix epoch, the value of an optional timestamp a request omits.
    pub fn unset() -> Timestamp {
        Timestamp::from_ms(0)
    }
}

impl Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => DateTime::parse_from_rfc3339(&text)
                .map(|time| Timestamp(time.with_timezone(&Utc)))
                .map_err(|error| ParseError::custom(format!("`{text}` is not an RFC 3339 date-time ({error})"))),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Timestamp {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.to_rfc3339_opts(SecondsFormat::Millis, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_milliseconds_and_z() {
        let time = Timestamp::from_ms(1_772_366_400_000);
        assert_eq!(time.to_json(), Some(Value::String("2026-03-01T12:00:00.000Z".into())));
    }

    #[test]
    fn reads_offsets() {
        let parsed = Timestamp::parse_from_json(Some(Value::String("2027-01-01T01:00:00+01:00".into()))).unwrap();
        assert_eq!(parsed.to_json(), Some(Value::String("2027-01-01T00:00:00.000Z".into())));
        assert!(Timestamp::parse_from_json(Some(Value::String("tomorrow".into()))).is_err());
    }
}
