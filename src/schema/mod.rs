//! The JSON Schemas (draft 2020-12) of the wire documents, derived from the
//! types of [`crate::event`] with `schemars`: the structure, `required`,
//! nullability and defaults come from the serde attributes, the
//! descriptions from the doc comments, and what serde cannot say (formats,
//! patterns, ranges, non-empty strings) from `#[schemars(...)]` attributes
//! on the fields, matching what the decoders check.
//!
//! `schemas/*.schema.json` are [`files`], written by the integration test
//! `schemas::checked_in_schemas_are_generated` when `UPDATE_SCHEMAS=1`, and
//! compared with them otherwise: a wire type changed without regenerating
//! fails that test. No I/O here.

pub mod types;

use schemars::generate::SchemaSettings;
use schemars::transform::{transform_subschemas, Transform};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value};

use crate::event::{AccessRequest, DeadLetter, Decision, EligibilityRecord, ShadowDifference};

/// The `$id` of `schemas/<name>.schema.json` is this followed by `<name>`.
pub const ID_BASE: &str = "urn:clearance:schema:";

/// One schema file: `schemas/<name>.schema.json`.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// The file's name without `.schema.json` (`"decision"`).
    pub name: &'static str,
    /// The schema.
    pub schema: Value,
}

impl SchemaFile {
    /// The file name, `<name>.schema.json`.
    pub fn file_name(&self) -> String {
        format!("{}.schema.json", self.name)
    }

    /// The file's text: the schema, pretty-printed (two spaces), with a
    /// final newline.
    pub fn text(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(&Ordered(&self.schema)).expect("a JSON value serializes");
        text.push('\n');
        text
    }
}

/// Every schema file, in a fixed order.
pub fn files() -> Vec<SchemaFile> {
    vec![
        file::<AccessRequest>(
            "access-request",
            "clearance access request",
            "clearance::event::AccessRequest",
        ),
        file::<EligibilityRecord>(
            "eligibility-record",
            "clearance eligibility record",
            "clearance::event::EligibilityRecord",
        ),
        file::<Decision>(
            "decision",
            "clearance decision",
            "clearance::event::Decision",
        ),
        file::<DeadLetter>(
            "dead-letter",
            "clearance dead letter",
            "clearance::event::DeadLetter",
        ),
        file::<ShadowDifference>(
            "shadow-difference",
            "clearance shadow difference",
            "clearance::event::ShadowDifference",
        ),
    ]
}

/// The schema of `T` as a self-contained file: every type it uses is under
/// `$defs`, so a validator needs no cross-file `$ref`.
fn file<T: JsonSchema>(name: &'static str, title: &str, rust_type: &str) -> SchemaFile {
    let generator = SchemaSettings::draft2020_12()
        .with_transform(Paragraphs)
        .with_transform(EnumValues)
        .with_transform(NumberFormats)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>();
    schema.insert("$id".into(), format!("{ID_BASE}{name}").into());
    schema.insert("title".into(), title.into());
    let description = schema
        .get("description")
        .and_then(Value::as_str)
        .map(|d| format!("{d}\n\nRust type: `{rust_type}`."))
        .unwrap_or_else(|| format!("Rust type: `{rust_type}`."));
    schema.insert("description".into(), description.into());
    SchemaFile {
        name,
        schema: schema.to_value(),
    }
}

/// Serializes a JSON value with the keys of its objects in a readable
/// order: `$schema`, `$id`, `title`, `description` and `type` first, then
/// the rest as they come (alphabetically, without serde_json's
/// `preserve_order`; `$defs` last).
struct Ordered<'a>(&'a Value);

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        const FIRST: &[&str] = &["$schema", "$id", "title", "description", "type"];
        const LAST: &[&str] = &["$defs"];
        match self.0 {
            Value::Object(map) => {
                let mut out = s.serialize_map(Some(map.len()))?;
                let rank = |k: &str| {
                    FIRST
                        .iter()
                        .position(|f| *f == k)
                        .unwrap_or(if LAST.contains(&k) {
                            usize::MAX
                        } else {
                            FIRST.len()
                        })
                };
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by_key(|(k, _)| rank(k));
                for (k, v) in entries {
                    out.serialize_entry(k, &Ordered(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    out.serialize_element(&Ordered(v))?;
                }
                out.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Doc comments arrive with their line breaks: join the lines of each
/// paragraph with a space, keeping blank lines between paragraphs.
#[derive(Debug, Clone)]
struct Paragraphs;

impl Transform for Paragraphs {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(Value::String(d)) = schema.get_mut("description") {
            *d = d
                .split("\n\n")
                .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("\n\n");
        }
        transform_subschemas(self, schema);
    }
}

/// A unit-only enum whose variants have doc comments comes out of
/// `schemars` as a `oneOf` of documented `const`s. This makes it a plain
/// `enum` of the values, the variants' documentation moved into the
/// description as a list (`` `value`: text ``).
#[derive(Debug, Clone)]
struct EnumValues;

impl Transform for EnumValues {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        let Some(obj) = schema.as_object_mut() else {
            return;
        };
        let Some(Value::Array(alternatives)) = obj.get("oneOf") else {
            return;
        };
        let mut values = Vec::new();
        let mut docs = Vec::new();
        for alternative in alternatives {
            let Some(a) = alternative.as_object() else {
                return;
            };
            let only_const = a
                .keys()
                .all(|k| matches!(k.as_str(), "type" | "const" | "description"));
            match (a.get("const"), a.get("type")) {
                (Some(Value::String(c)), Some(Value::String(t))) if only_const && t == "string" => {
                    values.push(Value::String(c.clone()));
                    if let Some(Value::String(d)) = a.get("description") {
                        docs.push(format!("- `{c}`: {d}"));
                    }
                }
                _ => return,
            }
        }
        obj.remove("oneOf");
        obj.insert("type".into(), "string".into());
        obj.insert("enum".into(), Value::Array(values));
        if !docs.is_empty() {
            let list = docs.join("\n");
            let description = match obj.get("description").and_then(Value::as_str) {
                Some(d) => format!("{d}\n\n{list}"),
                None => list,
            };
            obj.insert("description".into(), description.into());
        }
    }
}

/// `schemars` marks Rust's number types with formats (`uint64`, `int32`,
/// `double`, ...) that JSON Schema does not define: validators ignore them,
/// and strict ones reject the schema. This replaces an integer format with
/// the bounds it stands for (`minimum`, `maximum`, keeping tighter ones set
/// by `range`), and drops the float formats.
#[derive(Debug, Clone)]
struct NumberFormats;

impl Transform for NumberFormats {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        let Some(obj) = schema.as_object_mut() else {
            return;
        };
        let bounds: (Value, Value) = match obj.get("format").and_then(Value::as_str) {
            Some("int8") => (i8::MIN.into(), i8::MAX.into()),
            Some("int16") => (i16::MIN.into(), i16::MAX.into()),
            Some("int32") => (i32::MIN.into(), i32::MAX.into()),
            Some("int64" | "int") => (i64::MIN.into(), i64::MAX.into()),
            Some("uint8") => (0.into(), u8::MAX.into()),
            Some("uint16") => (0.into(), u16::MAX.into()),
            Some("uint32") => (0.into(), u32::MAX.into()),
            Some("uint64" | "uint") => (0.into(), u64::MAX.into()),
            Some("float" | "double") => {
                obj.remove("format");
                return;
            }
            _ => return,
        };
        obj.remove("format");
        let tighter = |obj: &Map<String, Value>, key: &str, bound: &Value, min: bool| match (
            obj.get(key).and_then(Value::as_f64),
            bound.as_f64(),
        ) {
            (Some(set), Some(b)) => (set > b) == min,
            _ => false,
        };
        if !tighter(obj, "minimum", &bounds.0, true) {
            obj.insert("minimum".into(), bounds.0);
        }
        if !tighter(obj, "maximum", &bounds.1, false) {
            obj.insert("maximum".into(), bounds.1);
        }
    }
}

// ---------------------------------------------------------------------------
// Schema-only types, for `#[schemars(with = "...")]` on fields whose Rust
// type says less than the wire format (a `String` that is a date, an
// `OffsetDateTime` written as RFC 3339).
// ---------------------------------------------------------------------------
