//! A string field whose content must never be echoed: secret values and
//! passwords. A parse error names the field's expected type, not what was
//! sent, and `Debug` prints a placeholder.

use std::borrow::Cow;
use std::fmt;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

#[derive(Clone, Default)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sensitive(<redacted>)")
    }
}

/// Lets poem-openapi's length and pattern validators read the value; their
/// messages never quote it.
impl AsRef<str> for Sensitive {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Type for Sensitive {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_password".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "password")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Sensitive {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Sensitive(text)),
            Some(Value::Null) | None => Err(ParseError::custom("a string is required")),
            Some(_) => Err(ParseError::custom("must be a JSON string")),
        }
    }
}

impl ToJSON for Sensitive {
    /// Never serializes the content; the type only appears in requests.
    fn to_json(&self) -> Option<Value> {
        Some(Value::String("<redacted>".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_and_debug_hide_the_content() {
        let error = Sensitive::parse_from_json(Some(serde_json::json!(["hunter2"]))).err().unwrap();
        assert!(!error.message().contains("hunter2"), "{}", error.message());
        let parsed = Sensitive::parse_from_json(Some(Value::String("hunter2".into()))).unwrap();
        assert_eq!(parsed.expose(), "hunter2");
        assert!(!format!("{parsed:?}").contains("hunter2"));
    }
}
