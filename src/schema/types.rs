//! Schema-only types for the wire types' `#[schemars(with = ...)]`
//! attributes: RFC 3339 timestamps, calendar days, country codes, and a
//! helper to mark decoder-required fields. Below the wire module: it
//! imports nothing of the crate.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

/// An RFC 3339 timestamp (`time::serde::rfc3339`): `format: date-time`.
pub(crate) struct DateTime;

impl JsonSchema for DateTime {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "DateTime".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// A calendar day, `YYYY-MM-DD` (the decoder checks it with `event::parse_date`).
pub(crate) struct Date;

impl JsonSchema for Date {
    fn schema_name() -> Cow<'static, str> {
        "Date".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A calendar day, YYYY-MM-DD.",
            "format": "date",
            "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$",
        })
    }
}

/// An ISO 3166-1 alpha-2 country code (`event::CountryCode`).
pub(crate) struct CountryCode;

impl JsonSchema for CountryCode {
    fn schema_name() -> Cow<'static, str> {
        "CountryCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An ISO 3166-1 alpha-2 country code, upper case (\"US\", \"CN\").",
            "pattern": "^[A-Z]{2}$",
        })
    }
}

/// Make `fields` of an object schema required (for `Option` fields the
/// decoder requires: serde's `default` would make them optional).
pub(crate) fn require(schema: &mut Schema, fields: &[&str]) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let required = obj
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = required {
        for f in fields {
            if !list.iter().any(|v| v == f) {
                list.push(Value::String((*f).to_string()));
            }
        }
    }
}
