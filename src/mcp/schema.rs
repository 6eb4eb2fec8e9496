//! One pass over every tool's schemas before the tool list is served, so that what a
//! host validates and what a model reads is plain JSON Schema 2020-12:
//!
//! - schemars' own formats (`uint64`, `int32`, `double`, `ip`, …) are not standard: the
//!   bounds they stand for are kept as `minimum`/`maximum` and the format is dropped;
//!   `ip` becomes "ipv4 or ipv6". Standard formats (`ipv4`, `ipv6`, …) stay.
//! - In input schemas an optional argument is simply not `required`: the
//!   `["T", "null"]` type arrays, `anyOf [T, null]` wrappers and `"default": null`
//!   that `Option<T>` produces are folded to `T` (null is still accepted).
//! - Input objects lose `additionalProperties: false`: the server refuses an unknown
//!   argument itself, naming it and the known ones, so the keyword only costs bytes.
//! - `$schema` is dropped (2020-12 is the MCP default), and so is the description of a
//!   `$defs` entry that only repeats what every property using it says.
//! - A `oneOf` of string constants becomes an `enum`; a property fixed by `const` drops
//!   its `type`; defaults that say nothing (`[]`, `false`, `""`) go from inputs.
//! - Output schemas keep their structure, types and bounds but not their descriptions
//!   or defaults: hosts check results against them, models do not read them.

use rmcp::model::JsonObject;
use serde_json::{Map, Value, json};

/// Formats JSON Schema 2020-12 defines; any other `format` is dropped.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Which side of a tool a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Arguments: optional means "may be left out".
    Input,
    /// Results: a `null` the server may send stays in the schema.
    Output,
}

/// Rewrites a tool's input or output schema in place (see the module docs).
pub(super) fn standardise(schema: &mut JsonObject, side: Side) {
    schema.remove("$schema");
    if let Some(Value::Object(defs)) = schema.get_mut("$defs") {
        for def in defs.values_mut().filter_map(Value::as_object_mut) {
            // Object and union definitions are always used through a property that
            // carries its own description; plain enums keep theirs (it names the choices).
            if def.contains_key("properties") || def.contains_key("oneOf") || def.contains_key("anyOf") {
                def.remove("description");
            }
        }
    }
    walk(schema, side);
}

fn walk(node: &mut Map<String, Value>, side: Side) {
    for child in node.values_mut() {
        match child {
            Value::Object(m) => walk(m, side),
            Value::Array(items) => {
                for m in items.iter_mut().filter_map(Value::as_object_mut) {
                    walk(m, side);
                }
            }
            _ => {}
        }
    }
    fix_format(node, side);
    fold_constants(node);
    match side {
        Side::Input => {
            fold_optional(node);
            // An empty list, `false` or "" as the default says nothing a model needs.
            if node.get("default").is_some_and(|d| {
                d.as_array().is_some_and(Vec::is_empty) || *d == Value::Bool(false) || d.as_str() == Some("")
            }) {
                node.remove("default");
            }
            // A property fixed to one string (the `type` tag of a kind) needs no `type`.
            if let Some(Value::Object(props)) = node.get_mut("properties") {
                for p in props.values_mut().filter_map(Value::as_object_mut) {
                    if p.get("const").is_some_and(Value::is_string) && p.get("type").is_some_and(|t| t == "string") {
                        p.remove("type");
                    }
                }
            }
            // The server names an unknown argument in its error; hosts need not check.
            if node.get("additionalProperties") == Some(&Value::Bool(false)) {
                node.remove("additionalProperties");
            }
        }
        Side::Output => {
            // Output schemas are a contract for hosts, not read by the model: the
            // descriptions (the argument docs are in the input schemas) and defaults go.
            if node.get("description").is_some_and(Value::is_string) {
                node.remove("description");
            }
            node.remove("default");
        }
    }
}

/// A `oneOf` of documented string constants (how schemars writes an enum with doc
/// comments on its variants) becomes a plain `enum`; the property using it says what
/// the values mean.
fn fold_constants(node: &mut Map<String, Value>) {
    let Some(Value::Array(variants)) = node.get("oneOf") else { return };
    let constants: Option<Vec<Value>> = variants
        .iter()
        .map(|v| match (v.get("const"), v.get("type")) {
            (Some(c @ Value::String(_)), Some(t)) if t == "string" => Some(c.clone()),
            _ => None,
        })
        .collect();
    if let Some(values) = constants.filter(|v| !v.is_empty()) {
        node.remove("oneOf");
        node.insert("type".into(), json!("string"));
        node.insert("enum".into(), Value::Array(values));
    }
}

/// Replaces a non-standard `format` by the bounds it stands for (in inputs; results
/// are what the server sends, and their integer widths say nothing to a host).
fn fix_format(node: &mut Map<String, Value>, side: Side) {
    let Some(Value::String(format)) = node.get("format") else { return };
    if STANDARD_FORMATS.contains(&format.as_str()) {
        return;
    }
    let format = format.clone();
    node.remove("format");
    if side == Side::Output && format != "ip" {
        node.remove("minimum");
        node.remove("maximum");
        return;
    }
    let bounds: Option<(i64, i64)> = match format.as_str() {
        "uint8" => Some((0, i64::from(u8::MAX))),
        "uint16" => Some((0, i64::from(u16::MAX))),
        "uint32" => Some((0, i64::from(u32::MAX))),
        "int8" => Some((i64::from(i8::MIN), i64::from(i8::MAX))),
        "int16" => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
        "int32" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        _ => None,
    };
    if let Some((min, max)) = bounds {
        node.entry("minimum").or_insert_with(|| json!(min));
        node.entry("maximum").or_insert_with(|| json!(max));
    } else if format.starts_with("uint") {
        node.entry("minimum").or_insert_with(|| json!(0));
    } else if format == "ip" {
        node.insert("anyOf".into(), json!([{ "format": "ipv4" }, { "format": "ipv6" }]));
    }
}

/// Folds what `Option<T>` adds to an argument's schema back to `T`.
fn fold_optional(node: &mut Map<String, Value>) {
    if node.get("default") == Some(&Value::Null) {
        node.remove("default");
    }
    if let Some(Value::Array(types)) = node.get_mut("type")
        && types.iter().any(|t| t == "null")
    {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            node.insert("type".into(), only);
        }
    }
    let null = json!({ "type": "null" });
    if let Some(Value::Array(alternatives)) = node.get("anyOf")
        && alternatives.len() == 2
        && alternatives.contains(&null)
        && let Some(Value::Object(other)) = alternatives.iter().find(|a| **a != null).cloned()
    {
        node.remove("anyOf");
        for (k, v) in other {
            node.entry(k).or_insert(v);
        }
    }
    let null_variant = |v: &Value| v == &null || v.get("const") == Some(&Value::Null);
    if let Some(Value::Array(alternatives)) = node.get_mut("oneOf")
        && alternatives.iter().any(null_variant)
    {
        alternatives.retain(|v| !null_variant(v));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Side, standardise};

    fn run(v: serde_json::Value, side: Side) -> serde_json::Value {
        let mut m = v.as_object().cloned().unwrap();
        standardise(&mut m, side);
        serde_json::Value::Object(m)
    }

    #[test]
    fn formats_become_bounds_and_options_fold_in_inputs() {
        let got = run(
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "port": { "type": "integer", "format": "uint16", "minimum": 0, "maximum": 65535 },
                    "n": { "type": ["integer", "null"], "format": "uint32", "minimum": 0, "default": null },
                    "big": { "type": "integer", "format": "uint64", "minimum": 0 },
                    "ip": { "type": "string", "format": "ip" },
                    "v4": { "type": "string", "format": "ipv4" },
                    "p": { "anyOf": [{ "$ref": "#/$defs/P" }, { "type": "null" }], "description": "which" }
                }
            }),
            Side::Input,
        );
        assert_eq!(
            got,
            json!({
                "type": "object",
                "properties": {
                    "port": { "type": "integer", "minimum": 0, "maximum": 65535 },
                    "n": { "type": "integer", "minimum": 0, "maximum": 4_294_967_295_u64 },
                    "big": { "type": "integer", "minimum": 0 },
                    "ip": { "type": "string", "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }] },
                    "v4": { "type": "string", "format": "ipv4" },
                    "p": { "$ref": "#/$defs/P", "description": "which" }
                }
            })
        );
    }

    #[test]
    fn outputs_keep_their_nulls() {
        let got = run(
            json!({ "properties": {
                "pid": { "type": ["integer", "null"], "format": "int32", "description": "QEMU's pid." },
                "state": { "oneOf": [{ "const": "on", "type": "string", "description": "On." },
                                     { "const": "off", "type": "string" }] } } }),
            Side::Output,
        );
        assert_eq!(
            got,
            json!({ "properties": {
                "pid": { "type": ["integer", "null"] },
                "state": { "type": "string", "enum": ["on", "off"] } } })
        );
    }
}
