//! The JSON Schemas in `schemas/` against the serde types of
//! `clearance::event` and the examples in `schemas/examples/`.
//!
//! The schema files are generated from the types (`clearance::schema`):
//! `UPDATE_SCHEMAS=1 cargo test --test it schemas::checked_in_schemas_are_generated`
//! writes them; without it, that test fails when a file differs.
//!
//! `validate` is also used by the end-to-end tests, to check every decision
//! and dead letter the engine publishes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use clearance::event::{
    self, AccessRequest, DeadLetter, Decision, EligibilityRecord, ShadowDifference,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// The schema files, by name (`schemas/<name>.schema.json`).
const SCHEMAS: &[&str] = &[
    "access-request",
    "eligibility-record",
    "decision",
    "dead-letter",
    "shadow-difference",
];

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// A compiled schema and its JSON.
struct Compiled {
    validator: jsonschema::Validator,
    schema: Value,
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| e.to_string())
}

/// The compiled `schemas/<schema_name>.schema.json`, compiled once per test
/// run. Formats (`date-time`, `date`) are asserted, not just annotated.
fn compiled(schema_name: &str) -> Result<Arc<Compiled>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Compiled>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(schema_name)
    {
        return Ok(Arc::clone(c));
    }
    let path = schemas_dir().join(format!("{schema_name}.schema.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read schema {}: {e}", path.display()))?;
    let schema: Value = serde_json::from_str(&text)
        .map_err(|e| format!("schema {} is not JSON: {e}", path.display()))?;
    let validator =
        compile(&schema).map_err(|e| format!("schema {} does not compile: {e}", path.display()))?;
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    let c = cache
        .entry(schema_name.to_string())
        .or_insert_with(|| Arc::new(Compiled { validator, schema }));
    Ok(Arc::clone(c))
}

/// Validate `doc` against `schemas/<schema_name>.schema.json` (`schema_name`
/// like `"decision"`). The error lists every violation, one per line, each
/// with its JSON pointer. Where an `anyOf`/`oneOf` (a nullable field, the
/// kind of an eligibility record) fails, the violations inside the closest
/// alternative are listed too, so the message names the field at fault.
pub fn validate(schema_name: &str, doc: &Value) -> Result<(), String> {
    let c = compiled(schema_name)?;
    let mut lines = Vec::new();
    for e in c.validator.iter_errors(doc) {
        describe(&c.schema, &e, "", 0, &mut lines);
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{schema_name}.schema.json rejects the document:\n  {}",
            lines.join("\n  ")
        ))
    }
}

/// Like `validate(..).is_ok()`, without building the messages.
fn is_valid(schema_name: &str, doc: &Value) -> bool {
    compiled(schema_name)
        .unwrap_or_else(|e| panic!("{e}"))
        .validator
        .is_valid(doc)
}

/// One error as lines of text; `base` is the pointer of the instance the
/// error's own pointer is relative to.
fn describe(
    schema: &Value,
    e: &jsonschema::ValidationError<'_>,
    base: &str,
    depth: usize,
    out: &mut Vec<String>,
) {
    use jsonschema::error::ValidationErrorKind as K;
    let at = format!("{base}{}", e.instance_path.as_str());
    let shown = if at.is_empty() { "/" } else { at.as_str() };
    let indent = "  ".repeat(depth);
    if matches!(e.kind, K::AnyOf | K::OneOfNotValid) && depth < 6 {
        let keyword = if matches!(e.kind, K::AnyOf) {
            "anyOf"
        } else {
            "oneOf"
        };
        let instance = e.instance.clone().into_owned();
        if let Some((label, sub)) = closest_alternative(schema, e.schema_path.as_str(), &instance) {
            if let Ok(validator) = compile(&sub) {
                out.push(format!(
                    "{indent}{shown}: matches no alternative of {keyword}; as {label}:"
                ));
                for inner in validator.iter_errors(&instance) {
                    describe(&sub, &inner, &at, depth + 1, out);
                }
                return;
            }
        }
    }
    out.push(format!("{indent}{shown}: {e}"));
}

/// The alternative of a failed `anyOf`/`oneOf` (at `schema_path`) that
/// `instance` comes closest to: not `null` when the instance is not null,
/// the one whose `const` properties (`kind`) match, else the one with the
/// fewest violations. Returns its label and a standalone schema for it.
fn closest_alternative(
    schema: &Value,
    schema_path: &str,
    instance: &Value,
) -> Option<(String, Value)> {
    let branches = resolve_schema_path(schema, schema_path)?.as_array()?;
    let mut best: Option<((bool, std::cmp::Reverse<usize>), String, Value)> = None;
    for branch in branches {
        if !instance.is_null() && branch.get("type") == Some(&json!("null")) {
            continue;
        }
        let sub = json!({
            "$schema": schema.get("$schema").cloned().unwrap_or(Value::Null),
            "$defs": schema.get("$defs").cloned().unwrap_or(Value::Null),
            "allOf": [branch],
        });
        let violations = compile(&sub).ok()?.iter_errors(instance).count();
        let rank = (
            consts_match(&sub, branch, instance),
            std::cmp::Reverse(violations),
        );
        let label = branch
            .get("$ref")
            .and_then(Value::as_str)
            .unwrap_or("an alternative")
            .to_string();
        if best.as_ref().is_none_or(|(r, ..)| rank > *r) {
            best = Some((rank, label, sub));
        }
    }
    best.map(|(_, label, sub)| (label, sub))
}

/// Whether `branch` (through one `$ref` and `allOf`s) has `const`
/// properties, all of them equal to the instance's.
fn consts_match(root: &Value, branch: &Value, instance: &Value) -> bool {
    fn walk(root: &Value, s: &Value, instance: &Value, found: &mut bool, depth: usize) -> bool {
        if depth > 4 {
            return true;
        }
        let mut ok = true;
        if let Some(target) = s.get("$ref").and_then(Value::as_str) {
            if let Some(t) = target.strip_prefix('#').and_then(|p| root.pointer(p)) {
                ok &= walk(root, t, instance, found, depth + 1);
            }
        }
        for sub in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            ok &= walk(root, sub, instance, found, depth + 1);
        }
        for (k, p) in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(c) = p.get("const") {
                *found = true;
                ok &= instance.get(k) == Some(c);
            }
        }
        ok
    }
    let mut found = false;
    let ok = walk(root, branch, instance, &mut found, 0);
    found && ok
}

/// The schema keyword an error's `schema_path` points at, following `$ref`s
/// (the path is an evaluation path: a `$ref` segment means "go to the
/// target").
fn resolve_schema_path<'s>(root: &'s Value, path: &str) -> Option<&'s Value> {
    let mut cur = root;
    for seg in path.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        cur = if seg == "$ref" {
            let target = cur.get("$ref")?.as_str()?.strip_prefix('#')?;
            root.pointer(target)?
        } else {
            match cur {
                Value::Object(m) => m.get(&seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            }
        };
    }
    Some(cur)
}

/// The schema an example file is for, by its name's prefix.
fn schema_for_example(file_name: &str) -> Option<&'static str> {
    const PREFIXES: &[(&str, &str)] = &[
        ("access-request", "access-request"),
        ("eligibility-", "eligibility-record"),
        ("decision-", "decision"),
        ("dead-letter", "dead-letter"),
        ("shadow-difference", "shadow-difference"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| file_name.starts_with(prefix))
        .map(|(_, schema)| *schema)
}

/// Every example: (file name, schema name, document).
fn examples() -> Vec<(String, &'static str, Value)> {
    let dir = schemas_dir().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let schema = schema_for_example(&name).unwrap_or_else(|| {
                panic!("example {name}: no schema for this name (add its prefix to schema_for_example)")
            });
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let doc: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("example {name} is not JSON: {e}"));
            (name, schema, doc)
        })
        .collect()
}

/// Deserialize `doc` into the Rust type of `schema_name`, serialize it
/// again, and return that.
fn serde_round_trip(schema_name: &str, doc: &Value) -> Result<Value, String> {
    fn go<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
        doc: &Value,
    ) -> Result<Value, String> {
        let value: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
        let out = serde_json::to_value(&value).map_err(|e| e.to_string())?;
        let again: T = serde_json::from_value(out.clone())
            .map_err(|e| format!("re-serialized value does not deserialize: {e}"))?;
        if again != value {
            return Err(format!(
                "round trip changed the value: {value:?} -> {again:?}"
            ));
        }
        Ok(out)
    }
    match schema_name {
        "access-request" => go::<AccessRequest>(doc),
        "eligibility-record" => go::<EligibilityRecord>(doc),
        "decision" => go::<Decision>(doc),
        "dead-letter" => go::<DeadLetter>(doc),
        "shadow-difference" => go::<ShadowDifference>(doc),
        other => Err(format!("no Rust type for schema {other}")),
    }
}

/// The checked-in schema files are exactly what `clearance::schema`
/// generates from the Rust types; with `UPDATE_SCHEMAS=1`, this test
/// writes them instead.
#[test]
fn checked_in_schemas_are_generated() {
    let update = std::env::var("UPDATE_SCHEMAS").is_ok_and(|v| v == "1");
    let files = clearance::schema::files();
    let names: Vec<&str> = files.iter().map(|f| f.name).collect();
    assert_eq!(names, SCHEMAS, "SCHEMAS lists every generated schema");
    let mut stale = Vec::new();
    for file in &files {
        let path = schemas_dir().join(file.file_name());
        let text = file.text();
        if update {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, &text)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                eprintln!("wrote {}", path.display());
            }
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(format!("schemas/{}", file.file_name()));
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with the Rust types (src/event.rs, src/vocab.rs): {}\n\
         regenerate with `UPDATE_SCHEMAS=1 cargo test --test it schemas::checked_in_schemas_are_generated`, \
         review the diff and commit it",
        stale.join(", ")
    );
    // No stray schema file that nothing generates.
    let mut on_disk: Vec<String> = std::fs::read_dir(schemas_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".schema.json"))
        .collect();
    on_disk.sort();
    let mut generated: Vec<String> = files.iter().map(|f| f.file_name()).collect();
    generated.sort();
    assert_eq!(
        on_disk, generated,
        "every schemas/*.schema.json is generated"
    );
}

#[test]
fn every_schema_compiles_as_draft_2020_12() {
    for name in SCHEMAS {
        let path = schemas_dir().join(format!("{name}.schema.json"));
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        compiled(name).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_example_validates_against_its_schema() {
    let examples = examples();
    let mut failures = Vec::new();
    for (name, schema, doc) in &examples {
        if let Err(e) = validate(schema, doc) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for schema in SCHEMAS {
        assert!(
            examples.iter().any(|(_, s, _)| s == schema),
            "no example for schema {schema}"
        );
    }
}

#[test]
fn every_example_deserializes_and_its_reserialization_validates() {
    let mut failures = Vec::new();
    for (name, schema, doc) in examples() {
        match serde_round_trip(schema, &doc) {
            Ok(out) => {
                if let Err(e) = validate(schema, &out) {
                    failures.push(format!("{name} re-serialized: {e}\n{out:#}"));
                }
            }
            Err(e) => failures.push(format!("{name}: does not deserialize: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn examples_pass_the_engines_decoders() {
    for (name, schema, doc) in examples() {
        let bytes = serde_json::to_vec(&doc).unwrap();
        match schema {
            "access-request" => {
                event::decode_request(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "eligibility-record" => {
                let rec: EligibilityRecord = serde_json::from_value(doc.clone()).unwrap();
                let key = rec.key();
                assert!(
                    key == format!(
                        "{}:{}",
                        doc["kind"].as_str().unwrap(),
                        doc["id"].as_str().unwrap()
                    ),
                    "{name}: key {key}"
                );
                event::decode_eligibility(key.as_bytes(), &bytes)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            _ => {}
        }
    }
}

/// Paths (as pointer segments) of every object member in `doc`, at any
/// depth, including objects inside arrays.
fn member_paths(doc: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match doc {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(k.clone());
                out.push(prefix.clone());
                member_paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(i.to_string());
                member_paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn parent_mut<'a>(doc: &'a mut Value, path: &[String]) -> &'a mut serde_json::Map<String, Value> {
    let mut cur = doc;
    for seg in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(m) => m.get_mut(seg).unwrap(),
            Value::Array(a) => &mut a[seg.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    cur.as_object_mut().unwrap()
}

/// Whether the change-feed decoder accepts `doc` (under its own key).
fn engine_accepts_record(doc: &Value) -> bool {
    let key = format!(
        "{}:{}",
        doc["kind"].as_str().unwrap_or(""),
        doc["id"].as_str().unwrap_or("")
    );
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    event::decode_eligibility(key.as_bytes(), &bytes).is_ok()
}

/// The schemas' `required` lists and nullability agree with serde: for every
/// member of every example, removing it (or setting it to null) is accepted
/// by the schema exactly when serde accepts it.
#[test]
fn schema_and_serde_agree_on_required_and_nullable_fields() {
    let mut disagreements = Vec::new();
    for (name, schema, doc) in examples() {
        let mut paths = Vec::new();
        member_paths(&doc, &mut Vec::new(), &mut paths);
        for path in paths {
            let key = path.last().unwrap().clone();
            for (what, mutate) in [("removed", false), ("null", true)] {
                let mut changed = doc.clone();
                let parent = parent_mut(&mut changed, &path);
                if mutate {
                    parent.insert(key.clone(), Value::Null);
                } else {
                    parent.remove(&key);
                }
                let by_schema = is_valid(schema, &changed);
                // What the engine accepts: serde, and for change-feed
                // records the decoder's checks too (dates, for instance).
                let by_serde = serde_round_trip(schema, &changed).is_ok()
                    && (schema != "eligibility-record" || engine_accepts_record(&changed));
                if by_schema != by_serde {
                    disagreements.push(format!(
                        "{name}: /{} {what}: schema {}, serde {}",
                        path.join("/"),
                        if by_schema { "accepts" } else { "rejects" },
                        if by_serde { "accepts" } else { "rejects" },
                    ));
                }
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn unknown_fields_are_allowed_everywhere() {
    for (name, schema, mut doc) in examples() {
        doc.as_object_mut()
            .unwrap()
            .insert("field_from_the_future".into(), json!({"x": [1, 2]}));
        validate(schema, &doc).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_round_trip(schema, &doc).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn example(file: &str) -> Value {
    let path = schemas_dir().join("examples").join(file);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn request_without_subject_fails_schema_and_decoder() {
    let mut doc = example("access-request.json");
    doc.as_object_mut().unwrap().remove("subject_id");
    let err = validate("access-request", &doc).unwrap_err();
    assert!(err.contains("subject_id"), "{err}");
    let e = event::decode_request(&serde_json::to_vec(&doc).unwrap()).unwrap_err();
    assert_eq!(e, event::DecodeError::MissingField("subject_id".into()));
}

#[test]
fn decision_with_unknown_outcome_fails() {
    let mut doc = example("decision-deny.json");
    doc["outcome"] = json!("maybe");
    let err = validate("decision", &doc).unwrap_err();
    assert!(err.contains("/outcome"), "{err}");
    assert!(serde_json::from_value::<Decision>(doc).is_err());
}

/// Reasons and obligations are closed vocabularies (`vocab::Reason`,
/// `vocab::Obligation`): the decision schema lists every value, and
/// nothing else passes.
#[test]
fn decision_reasons_and_obligations_are_the_vocabulary() {
    use clearance::vocab::{Obligation, Reason};
    let schema = compiled("decision").unwrap_or_else(|e| panic!("{e}"));
    let items = |field: &str| -> Vec<String> {
        let mut items = schema.schema["properties"][field]["items"].clone();
        if let Some(target) = items["$ref"].as_str() {
            items = schema.schema.pointer(&target[1..]).unwrap().clone();
        }
        let mut values: Vec<String> = items["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{field} items have no enum: {items:#}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        values.sort();
        values
    };
    let mut reasons: Vec<String> = Reason::ALL.iter().map(|r| r.as_str().into()).collect();
    reasons.sort();
    assert_eq!(items("reasons"), reasons);
    let mut obligations: Vec<String> = Obligation::ALL.iter().map(|o| o.as_str().into()).collect();
    obligations.sort();
    assert_eq!(items("obligations"), obligations);

    let mut doc = example("decision-deny.json");
    doc["reasons"] = json!(["restricted_nationality", "because_i_said_so"]);
    let err = validate("decision", &doc).unwrap_err();
    assert!(err.contains("/reasons/1"), "{err}");
    let mut doc = example("decision-deny.json");
    doc["obligations"] = json!(["pray"]);
    let err = validate("decision", &doc).unwrap_err();
    assert!(err.contains("/obligations/0"), "{err}");
    let mut doc = example("shadow-difference.json");
    doc["shadow"]["reasons"] = json!(["maybe"]);
    let err = validate("shadow-difference", &doc).unwrap_err();
    assert!(err.contains("/shadow/reasons/0"), "{err}");
}

#[test]
fn malformed_values_fail_the_schemas() {
    let cases: &[(&str, &str, &str, Value)] = &[
        (
            "access-request.json",
            "access-request",
            "/geo/country",
            json!("usa"),
        ),
        (
            "access-request.json",
            "access-request",
            "/geo/confidence",
            json!(1.5),
        ),
        (
            "access-request.json",
            "access-request",
            "/event_time",
            json!("yesterday"),
        ),
        (
            "access-request.json",
            "access-request",
            "/request_id",
            json!(""),
        ),
        (
            "eligibility-user.json",
            "eligibility-record",
            "/kind",
            json!("robot"),
        ),
        (
            "eligibility-user.json",
            "eligibility-record",
            "/us_person_status",
            json!("green_card"),
        ),
        (
            "eligibility-user.json",
            "eligibility-record",
            "/version",
            json!(-1),
        ),
        (
            "eligibility-user.json",
            "eligibility-record",
            "/citizenships/0/acquired_on",
            json!("04/06/1991"),
        ),
        (
            "eligibility-organization.json",
            "eligibility-record",
            "/owners/0/percent",
            json!(130),
        ),
        (
            "eligibility-organization.json",
            "eligibility-record",
            "/screening_hits/0/status",
            json!("maybe"),
        ),
        (
            "decision-allow.json",
            "decision",
            "/decided_at",
            json!("2026-11-28 14:04:10"),
        ),
        (
            "decision-allow.json",
            "decision",
            "/reasons",
            json!("us_person"),
        ),
        (
            "dead-letter.json",
            "dead-letter",
            "/payload_base64",
            json!("not base64!"),
        ),
        (
            "dead-letter.json",
            "dead-letter",
            "/source/partition",
            json!("0"),
        ),
    ];
    for (file, schema, pointer, bad) in cases {
        let mut doc = example(file);
        *doc.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{file}: no {pointer}")) = bad.clone();
        let err = validate(schema, &doc)
            .err()
            .unwrap_or_else(|| panic!("{file} with {pointer} = {bad} passed the schema"));
        assert!(err.contains(pointer), "{file} {pointer}: {err}");
    }
}

#[test]
fn eligibility_kind_selects_the_record_type() {
    // An organization document labelled as a user fails: `id` and `version`
    // fit, but the required `us_person_status` is missing.
    let mut doc = example("eligibility-organization.json");
    doc["kind"] = json!("user");
    assert!(validate("eligibility-record", &doc).is_err());
    assert!(serde_json::from_value::<EligibilityRecord>(doc.clone()).is_err());
    doc.as_object_mut().unwrap().remove("kind");
    assert!(validate("eligibility-record", &doc).is_err());
    assert!(serde_json::from_value::<EligibilityRecord>(doc).is_err());
}
