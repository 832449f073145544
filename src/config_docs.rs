//! The operator reference of the configuration, `docs/configuration.md`,
//! generated from the configuration types: `clearance config-docs >
//! docs/configuration.md`.
//!
//! - The keys, their order and their defaults come from
//!   [`Config::default()`](crate::config::Config), serialized.
//! - The text of each key is the doc comment of its field in
//!   `src/config.rs`, whose source is compiled into this module (rustdoc
//!   strings do not exist at run time otherwise); so are the Rust types and
//!   the values of an enum.
//! - The examples are [`EXAMPLES`], one per key.
//!
//! A key without a doc comment or an example, or an example that does not
//! load, is an error: a new field fails the test that keeps the file
//! current until it is documented.

use std::fmt::Write as _;

use serde_json::Value;

use crate::config::{self, Config};

/// The source of the configuration types, for the doc comments.
const SOURCE: &str = include_str!("config.rs");

/// The path of the generated file, relative to the repository.
pub const DOCS_PATH: &str = "docs/configuration.md";

/// An example value of every key, as a TOML value.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "kafka.bootstrap_servers",
        r#""broker-1:9092,broker-2:9092""#,
    ),
    ("kafka.group_id", r#""clearance-eu""#),
    ("kafka.client_id", r#""clearance-eu""#),
    (
        "kafka.properties",
        r#"{ "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512" }"#,
    ),
    ("kafka.statistics_interval_ms", "5000"),
    ("kafka.feed_bootstrap_servers", r#""feed-1:9092""#),
    ("topics.requests", r#""eu.access.requests""#),
    ("topics.eligibility", r#""eu.eligibility.changes""#),
    ("topics.decisions", r#""eu.access.decisions""#),
    ("topics.deadletter", r#""eu.access.deadletter""#),
    ("topics.policy", r#""eu.clearance.policy""#),
    ("topics.shadow", r#""eu.access.shadow""#),
    ("topics.partitions", "12"),
    ("topics.replication_factor", "3"),
    ("topics.create_missing", "false"),
    ("engine.delivery", r#""exactly-once""#),
    ("engine.transaction_max_messages", "500"),
    ("engine.transaction_max_ms", "50"),
    ("engine.staleness_bound_secs", "120"),
    ("engine.instance_id", r#""clearance-eu-1""#),
    ("engine.workers", "4"),
    ("engine.producer_queue_max_messages", "200000"),
    ("engine.producer_linger_ms", "10"),
    ("engine.reply_linger_ms", "0"),
    ("engine.commit_interval_ms", "500"),
    ("engine.shutdown_timeout_ms", "30000"),
    ("engine.deadletter_max_payload_bytes", "16384"),
    (
        "engine.snapshot_path",
        r#""/var/lib/clearance/eligibility.snapshot""#,
    ),
    ("engine.snapshot_interval_secs", "300"),
    ("engine.max_input_bytes", "65536"),
    ("engine.feed_catchup_timeout_secs", "600"),
    ("engine.deletion_markers_max", "5000000"),
    ("admin.listen", r#""0.0.0.0:9464""#),
    ("policy.file", r#""/etc/clearance/policy.toml""#),
    (
        "policy.trusted_keys",
        r#"["o6nfrCxDFpf6eNcylcrMZ8N+d8SO0Ph0ehykR6yBtcQ=", "0DykrhxmBkECc0Pb9Gp9JZKMHqrimTUHiqeTJrvnK20="]"#,
    ),
    ("policy.shadow_file", r#""/etc/clearance/candidate.toml""#),
];

/// One documented key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Its section (`engine`).
    pub section: String,
    /// Its field (`workers`).
    pub field: String,
    /// The Rust type of the field, as written in `src/config.rs`.
    pub rust_type: String,
    /// The doc comment of the field, on one line.
    pub doc: String,
    /// The default, serialized (`null`: unset).
    pub default: Value,
    /// An example, as a TOML value.
    pub example: toml::Value,
}

impl Key {
    /// `section.field`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.field)
    }

    /// The environment variable that sets it. A table (`kafka.properties`)
    /// takes one variable per entry: `..._PROPERTIES__<NAME>`.
    pub fn env_var(&self) -> String {
        let base = format!(
            "CLEARANCE_{}__{}",
            self.section.to_uppercase(),
            self.field.to_uppercase()
        );
        if self.is_table() {
            format!("{base}__<NAME>")
        } else {
            base
        }
    }

    fn is_table(&self) -> bool {
        self.default.is_object()
    }

    /// The example as environment variables (`NAME=value` lines).
    pub fn example_env(&self) -> Vec<(String, String)> {
        let base = format!(
            "CLEARANCE_{}__{}",
            self.section.to_uppercase(),
            self.field.to_uppercase()
        );
        match &self.example {
            toml::Value::Table(t) => t
                .iter()
                .map(|(k, v)| {
                    // librdkafka property names use dots; the variable `_`.
                    (
                        format!("{base}__{}", k.replace('.', "_").to_uppercase()),
                        plain(v),
                    )
                })
                .collect(),
            v => vec![(base, plain(v))],
        }
    }
}

/// A TOML value as an environment variable's text (a list: comma-separated,
/// as list fields read it from the environment).
fn plain(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A field of a struct (or a variant of an enum) of the source, with its
/// doc comment.
#[derive(Debug)]
struct Item {
    name: String,
    ty: String,
    doc: String,
}

/// The fields of `pub struct NAME` or the variants of `pub enum NAME`.
fn items(kind: &str, name: &str) -> Option<Vec<Item>> {
    let header = format!("pub {kind} {name} {{");
    let mut lines = SOURCE.lines().skip_while(|l| l.trim() != header);
    lines.next()?;
    let mut out = Vec::new();
    let mut doc: Vec<&str> = Vec::new();
    for line in lines {
        let t = line.trim();
        if t == "}" {
            break;
        }
        if let Some(d) = t.strip_prefix("///") {
            doc.push(d.strip_prefix(' ').unwrap_or(d));
            continue;
        }
        if t.starts_with("#[") || t.starts_with("//") || t.is_empty() {
            continue;
        }
        let (item, ty) = match kind {
            "struct" => {
                let Some((n, ty)) = t.strip_prefix("pub ").and_then(|f| f.split_once(':')) else {
                    doc.clear();
                    continue;
                };
                (n.trim(), ty.trim().trim_end_matches(',').trim())
            }
            _ => (t.trim_end_matches(','), ""),
        };
        out.push(Item {
            name: item.to_string(),
            ty: ty.to_string(),
            doc: doc.join(" ").trim().to_string(),
        });
        doc.clear();
    }
    Some(out)
}

/// `AtLeastOnce` → `at-least-once` (the enums of the configuration are
/// `rename_all = "kebab-case"`; [`check_examples`] loads each value).
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The values of an enum type of `src/config.rs`, with their docs.
fn enum_values(ty: &str) -> Option<Vec<(String, String)>> {
    items("enum", ty).map(|vs| vs.into_iter().map(|v| (kebab(&v.name), v.doc)).collect())
}

/// The TOML type of a Rust type of the configuration, for the reader.
fn type_name(ty: &str) -> String {
    if let Some(inner) = ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        return format!("{}, optional", type_name(inner));
    }
    match ty {
        "String" => "string".into(),
        "bool" => "boolean".into(),
        "PathBuf" => "path (string)".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => format!("integer (`{ty}`)"),
        "BTreeMap<String, String>" => "table of strings".into(),
        other => match enum_values(other) {
            Some(vs) => format!(
                "one of {}",
                vs.iter()
                    .map(|(v, _)| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("`{other}`"),
        },
    }
}

/// Every key, in the order of the types, or every problem found.
pub fn keys() -> Result<Vec<Key>, Vec<String>> {
    let mut problems = Vec::new();
    let defaults = serde_json::to_value(Config::default()).expect("the config serializes");
    let Value::Object(sections) = &defaults else {
        unreachable!("Config is a struct")
    };
    let Some(section_types) = items("struct", "Config") else {
        return Err(vec!["src/config.rs has no `pub struct Config {`".into()]);
    };
    // In the order of the types; every serialized key must be a field and
    // every field a serialized key.
    let mut out = Vec::new();
    for section in sections.keys() {
        if !section_types.iter().any(|s| &s.name == section) {
            problems.push(format!(
                "section {section}: no field in `pub struct Config`"
            ));
        }
    }
    for st in &section_types {
        let section = &st.name;
        let Some(Value::Object(fields)) = sections.get(section) else {
            problems.push(format!(
                "section {section}: not a table of Config::default()"
            ));
            continue;
        };
        let Some(field_items) = items("struct", &st.ty) else {
            problems.push(format!("section {section}: no `pub struct {}`", st.ty));
            continue;
        };
        for field in fields.keys() {
            if !field_items.iter().any(|i| &i.name == field) {
                problems.push(format!(
                    "{section}.{field}: no field `{field}` in `pub struct {}`",
                    st.ty
                ));
            }
        }
        for item in &field_items {
            let field = &item.name;
            let path = format!("{section}.{field}");
            let Some(default) = fields.get(field) else {
                problems.push(format!("{path}: not in the serialized Config::default()"));
                continue;
            };
            if item.doc.is_empty() {
                problems.push(format!(
                    "{path}: no doc comment on `{}::{field}` in src/config.rs",
                    st.ty
                ));
            }
            let example = match EXAMPLES.iter().find(|(k, _)| *k == path) {
                Some((_, text)) => match format!("v = {text}").parse::<toml::Table>() {
                    Ok(mut t) => t.remove("v").expect("parsed v"),
                    Err(e) => {
                        problems.push(format!("{path}: the example is not a TOML value: {e}"));
                        continue;
                    }
                },
                None => {
                    problems.push(format!(
                        "{path}: no example in config_docs::EXAMPLES (src/config_docs.rs)"
                    ));
                    continue;
                }
            };
            out.push(Key {
                section: section.clone(),
                field: field.clone(),
                rust_type: item.ty.clone(),
                doc: item.doc.clone(),
                default: default.clone(),
                example,
            });
        }
    }
    for (k, _) in EXAMPLES {
        if !out.iter().any(|key| key.path() == *k) && !problems.iter().any(|p| p.starts_with(k)) {
            problems.push(format!(
                "{k}: an example of a key that does not exist (remove it from EXAMPLES)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Load every example through the `CLEARANCE_*` variables and check that
/// it sets its key to the example's value: the variable names and the
/// examples in the document are right. (A path that does not exist on
/// this machine, `policy.file`'s, is accepted when it is the only error.)
pub fn check_examples(keys: &[Key]) -> Vec<String> {
    let mut problems = Vec::new();
    for key in keys {
        let path = key.path();
        let mut values = vec![key.example.clone()];
        // Every value of an enum loads too.
        if let Some(vs) = enum_values(&key.rust_type) {
            values.extend(vs.into_iter().map(|(v, _)| toml::Value::String(v)));
        }
        for value in values {
            let k = Key {
                example: value.clone(),
                ..key.clone()
            };
            let env = k.example_env();
            match config::load(None, env.clone()) {
                Ok(cfg) => {
                    let got =
                        &serde_json::to_value(&cfg).expect("serializes")[&key.section][&key.field];
                    let want = serde_json::to_value(&value).expect("serializes");
                    if *got != want {
                        problems.push(format!("{path}: {env:?} loads as {got}, not {want}"));
                    }
                }
                Err(config::ConfigError::Invalid(errs))
                    if errs.iter().all(|e| {
                        e.field == path
                            && e.field == "policy.file"
                            && e.message.ends_with("does not exist")
                    }) => {}
                Err(e) => problems.push(format!("{path}: {env:?} does not load: {e}")),
            }
        }
    }
    problems
}

/// A default, for the reader.
fn default_text(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        Value::Object(m) if m.is_empty() => "`{}` (empty)".into(),
        Value::String(s) => format!("`{}`", toml::Value::String(s.clone())),
        other => format!("`{other}`"),
    }
}

/// The example as a TOML snippet.
fn example_toml(key: &Key) -> String {
    format!("[{}]\n{} = {}", key.section, key.field, key.example)
}

/// `docs/configuration.md`, or every problem that keeps it from being
/// complete.
pub fn render() -> Result<String, Vec<String>> {
    let keys = keys()?;
    let problems = check_examples(&keys);
    if !problems.is_empty() {
        return Err(problems);
    }
    let section_docs = items("struct", "Config").unwrap_or_default();
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "# Configuration reference\n\n\
         <!-- Generated from src/config.rs by `clearance config-docs`: do not edit.\n     \
         Regenerate with: cargo run -- config-docs > {DOCS_PATH} -->\n\n\
         One typed configuration, layered: the built-in defaults below, then the TOML\n\
         file given with `--config`, then environment variables\n\
         `CLEARANCE_<SECTION>__<FIELD>`. Unknown keys are errors, and every invalid\n\
         key is reported, with where its value came from, before the program exits.\n\
         `clearance config --config FILE` prints the effective configuration (secrets\n\
         masked).\n\n\
         In an environment variable, an integer or `true`/`false` is read as such and\n\
         anything else as a string. A table (`kafka.properties`) takes one variable\n\
         per entry: `CLEARANCE_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL` sets\n\
         `security.protocol` (the `_` of the name become dots).\n\n\
         This file is generated from the configuration types; a test fails when it\n\
         is out of date, or when a key has no doc comment or no example.\n"
    );
    let _ = writeln!(
        w,
        "## Keys\n\n| key | default | environment variable |\n|---|---|---|"
    );
    for k in &keys {
        let _ = writeln!(
            w,
            "| [`{}`](#{}) | {} | `{}` |",
            k.path(),
            anchor(&k.path()),
            default_text(&k.default).replace('|', "\\|"),
            k.env_var()
        );
    }
    let mut section = "";
    for k in &keys {
        if k.section != section {
            section = &k.section;
            let doc = section_docs
                .iter()
                .find(|i| i.name == k.section)
                .map(|i| i.doc.as_str())
                .unwrap_or("");
            let _ = writeln!(w, "\n## `[{section}]`\n\n{doc}");
        }
        let _ = writeln!(w, "\n### `{}`\n\n{}\n", k.path(), k.doc);
        let _ = writeln!(w, "- type: {}", type_name(&k.rust_type));
        if let Some(vs) = enum_values(&k.rust_type) {
            for (v, doc) in vs {
                let _ = writeln!(w, "  - `{v}`: {doc}");
            }
        }
        let _ = writeln!(w, "- default: {}", default_text(&k.default));
        let _ = writeln!(w, "- environment: `{}`", k.env_var());
        let _ = writeln!(w, "- example:\n\n  ```toml");
        for line in example_toml(k).lines() {
            let _ = writeln!(w, "  {line}");
        }
        let _ = writeln!(w, "  ```\n\n  ```sh");
        for (name, value) in k.example_env() {
            let _ = writeln!(w, "  {name}={}", shell_quote(&value));
        }
        let _ = writeln!(w, "  ```");
    }
    Ok(s)
}

/// GitHub's anchor of a heading made of one code span.
fn anchor(path: &str) -> String {
    path.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .collect::<String>()
        .to_lowercase()
}

fn shell_quote(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | ',' | '/'))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_with_an_example_that_loads() {
        let keys = keys().unwrap_or_else(|p| panic!("undocumented keys:\n  {}", p.join("\n  ")));
        assert!(keys.len() >= 30, "{} keys", keys.len());
        let problems = check_examples(&keys);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let k = keys.iter().find(|k| k.path() == "engine.workers").unwrap();
        assert_eq!(k.env_var(), "CLEARANCE_ENGINE__WORKERS");
        assert_eq!(k.default, serde_json::json!(0));
        assert!(k.doc.starts_with("Consumer threads"), "{}", k.doc);
    }

    /// The checked-in `docs/configuration.md` is what the types generate.
    #[test]
    fn docs_configuration_md_is_current() {
        let want = render().unwrap_or_else(|p| panic!("cannot generate:\n  {}", p.join("\n  ")));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let have = std::fs::read_to_string(path).unwrap_or_default();
        if have != want {
            let first = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
            panic!(
                "{DOCS_PATH} is out of date (first difference at line {}): regenerate it with\n  \
                 cargo run -- config-docs > {DOCS_PATH}",
                first + 1
            );
        }
    }

    #[test]
    fn kebab_and_types() {
        assert_eq!(kebab("AtLeastOnce"), "at-least-once");
        assert_eq!(type_name("Option<PathBuf>"), "path (string), optional");
        assert_eq!(
            type_name("DeliveryMode"),
            "one of `at-least-once`, `exactly-once`"
        );
    }
}
