//! cloud-config documents: a small block-YAML writer whose every string is written as
//! a JSON string (YAML reads it as a double-quoted scalar, so no value can break out of
//! its place, and no value changes type under YAML 1.1 rules as cloud-init's PyYAML
//! applies them: `"yes"` stays a string), and the check of a caller's raw `user_data`.
//!
//! Why `serde_yaml_ng`: a caller's YAML must be parsed to be checked (a mapping, its
//! keys, no custom tags), and a YAML parser is not something to write here. It is the
//! maintained fork of `serde_yaml` (archived), keeps its limits on recursion and alias
//! expansion (a billion-laughs document is an error, not a hang), and is used only to
//! check: the caller's text goes into the seed as written, so cloud-init reads exactly
//! what the caller wrote.

use super::ProvisionError;

/// Largest raw `user_data` accepted (bytes).
pub const MAX_USER_DATA_BYTES: usize = 64 << 10;

/// A node of a generated document.
#[derive(Debug, Clone, PartialEq)]
pub enum Y {
    Str(String),
    Bool(bool),
    Num(serde_json::Number),
    Null,
    Seq(Vec<Y>),
    Map(Vec<(String, Y)>),
}

impl Y {
    pub fn str(s: impl Into<String>) -> Self {
        Y::Str(s.into())
    }

    pub fn strs<S: AsRef<str>>(items: &[S]) -> Self {
        Y::Seq(items.iter().map(|s| Y::str(s.as_ref())).collect())
    }
}

impl From<&serde_json::Value> for Y {
    fn from(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Y::Null,
            serde_json::Value::Bool(b) => Y::Bool(*b),
            serde_json::Value::Number(n) => Y::Num(n.clone()),
            serde_json::Value::String(s) => Y::Str(s.clone()),
            serde_json::Value::Array(a) => Y::Seq(a.iter().map(Y::from).collect()),
            serde_json::Value::Object(o) => Y::Map(o.iter().map(|(k, v)| (k.clone(), Y::from(v))).collect()),
        }
    }
}

/// A string as YAML reads it back unchanged: a JSON string.
#[must_use]
pub fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Keys written bare: identifiers that YAML 1.1 does not read as booleans or null.
fn key(k: &str) -> String {
    let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain { k.to_owned() } else { q(k) }
}

fn scalar(y: &Y) -> Option<String> {
    match y {
        Y::Str(s) => Some(q(s)),
        Y::Bool(b) => Some(b.to_string()),
        Y::Num(n) => Some(n.to_string()),
        Y::Null => Some("null".into()),
        Y::Seq(s) if s.is_empty() => Some("[]".into()),
        Y::Map(m) if m.is_empty() => Some("{}".into()),
        Y::Seq(_) | Y::Map(_) => None,
    }
}

/// Writes the entries of a block mapping at `indent`; with `inline`, the first key
/// goes where the cursor is (after a sequence's `- `).
pub fn write_map(entries: &[(String, Y)], indent: usize, inline: bool, out: &mut String) {
    for (i, (k, v)) in entries.iter().enumerate() {
        if !(inline && i == 0) {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key(k));
        out.push(':');
        match scalar(v) {
            Some(s) => {
                out.push(' ');
                out.push_str(&s);
                out.push('\n');
            }
            None => {
                out.push('\n');
                write_node(v, indent + 2, out);
            }
        }
    }
}

fn write_seq(items: &[Y], indent: usize, out: &mut String) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match (scalar(item), item) {
            (Some(s), _) => {
                out.push(' ');
                out.push_str(&s);
                out.push('\n');
            }
            (None, Y::Map(m)) => {
                out.push(' ');
                write_map(m, indent + 2, true, out);
            }
            (None, _) => {
                out.push('\n');
                write_node(item, indent + 2, out);
            }
        }
    }
}

fn write_node(y: &Y, indent: usize, out: &mut String) {
    match y {
        Y::Map(m) => write_map(m, indent, false, out),
        Y::Seq(s) => write_seq(s, indent, out),
        _ => {}
    }
}

/// A caller's raw cloud-config, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum UserData {
    /// YAML: kept as written (without its `#cloud-config` line); its top-level keys.
    Yaml { text: String, keys: Vec<String> },
    /// A JSON object: written out by [`write_map`], so its types are exact.
    Json(Vec<(String, Y)>),
}

impl UserData {
    /// Its top-level keys.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        match self {
            UserData::Yaml { keys, .. } => keys.clone(),
            UserData::Json(entries) => entries.iter().map(|(k, _)| k.clone()).collect(),
        }
    }
}

/// First lines of user-data formats other than cloud-config.
const OTHER_FORMATS: &[&str] = &[
    "#!",
    "#include",
    "#cloud-boothook",
    "#part-handler",
    "#upstart-job",
    "## template",
    "content-type:",
    "mime-version:",
];

/// Finds a custom tag (`!foo`) anywhere in `v`: cloud-init's safe loader refuses them.
fn tag_in(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::Tagged(t) => Some(t.tag.to_string()),
        serde_yaml_ng::Value::Sequence(s) => s.iter().find_map(tag_in),
        serde_yaml_ng::Value::Mapping(m) => m.iter().find_map(|(k, v)| tag_in(k).or_else(|| tag_in(v))),
        _ => None,
    }
}

/// Parses YAML text as a mapping (`field` names it in errors).
///
/// # Errors
/// Not YAML, not a mapping, non-string keys, custom tags.
pub fn yaml_mapping(field: &str, text: &str) -> Result<serde_yaml_ng::Mapping, ProvisionError> {
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| ProvisionError::invalid(field, format!("is not valid YAML: {e}")))?;
    let serde_yaml_ng::Value::Mapping(m) = v else {
        return Err(ProvisionError::invalid(field, "must be a mapping of cloud-config keys (key: value lines)"));
    };
    if let Some(k) = m.keys().find(|k| !k.is_string()) {
        return Err(ProvisionError::invalid(field, format!("has a key that is not text: {k:?}")));
    }
    if let Some(t) = tag_in(&serde_yaml_ng::Value::Mapping(m.clone())) {
        return Err(ProvisionError::invalid(
            field,
            format!("uses the YAML tag {}, which cloud-init's safe loader refuses", crate::error::quote(&t)),
        ));
    }
    Ok(m)
}

/// Checks a caller's raw `user_data`: at most [`MAX_USER_DATA_BYTES`], cloud-config
/// (YAML, optionally after a `#cloud-config` line, or a JSON object), a mapping.
///
/// # Errors
/// [`ProvisionError::Invalid`] naming `field`.
pub fn parse_user_data(field: &str, text: &str) -> Result<UserData, ProvisionError> {
    if text.len() > MAX_USER_DATA_BYTES {
        return Err(ProvisionError::invalid(field, format!("{} bytes; at most {MAX_USER_DATA_BYTES}", text.len())));
    }
    if text.contains('\0') {
        return Err(ProvisionError::invalid(field, "contains a NUL byte"));
    }
    let first = text.trim_start().lines().next().unwrap_or("").trim_end();
    let body = if first == "#cloud-config" { text.trim_start().split_once('\n').map_or("", |(_, b)| b) } else { text };
    let lower = first.to_ascii_lowercase();
    if first != "#cloud-config" && OTHER_FORMATS.iter().any(|p| lower.starts_with(p)) {
        return Err(ProvisionError::invalid(
            field,
            format!(
                "starts with {}: only cloud-config is taken (YAML or a JSON object); give scripts as run_commands, or as write_files plus run_commands",
                crate::error::quote(first)
            ),
        ));
    }
    if body.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| ProvisionError::invalid(field, format!("is not valid JSON: {e}")))?;
        let serde_json::Value::Object(o) = v else { unreachable!("text starting with '{{' parses as an object") };
        return Ok(UserData::Json(o.iter().map(|(k, v)| (k.clone(), Y::from(v))).collect()));
    }
    let m = yaml_mapping(field, body)?;
    if m.is_empty() {
        return Err(ProvisionError::invalid(field, "has no cloud-config keys"));
    }
    let keys = m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
    let mut text = body.trim_end().to_owned();
    text.push('\n');
    Ok(UserData::Yaml { text, keys })
}

/// The whole `user-data`: `#cloud-config`, the generated entries, then the caller's
/// (keys set in both are refused before this). YAML user data is checked to read back
/// as one mapping with every key of both parts: text that does not sit as a block
/// mapping at column 0 is refused rather than written in a form cloud-init would
/// misread.
///
/// # Errors
/// The caller's YAML does not combine into one mapping.
pub fn document(field: &str, ours: &[(String, Y)], theirs: Option<&UserData>) -> Result<String, ProvisionError> {
    let mut out = String::from("#cloud-config\n");
    write_map(ours, 0, false, &mut out);
    match theirs {
        None => {}
        Some(UserData::Json(entries)) => write_map(entries, 0, false, &mut out),
        Some(UserData::Yaml { text, keys }) => {
            out.push_str(text);
            let combined = yaml_mapping(field, &out).map_err(|_| combine_error(field))?;
            if combined.len() != ours.len() + keys.len() {
                return Err(combine_error(field));
            }
        }
    }
    Ok(out)
}

fn combine_error(field: &str) -> ProvisionError {
    ProvisionError::invalid(
        field,
        "cannot be combined with the other cloud_init fields: write it as a block mapping (key: value lines starting at column 0) or as a JSON object",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(entries: &[(String, Y)]) -> String {
        let mut s = String::new();
        write_map(entries, 0, false, &mut s);
        s
    }

    #[test]
    fn nested_values_are_block_yaml_with_json_scalars() {
        let user = Y::Map(vec![("name".into(), Y::str("ops")), ("groups".into(), Y::strs(&["adm", "docker"]))]);
        let d = doc(&[("users".into(), Y::Seq(vec![Y::str("default"), user]))]);
        assert_eq!(d, "users:\n  - \"default\"\n  - name: \"ops\"\n    groups:\n      - \"adm\"\n      - \"docker\"\n");
    }

    #[test]
    fn written_document_reads_back_as_the_same_values() {
        let json = serde_json::json!({"a": {"b": [1, true, null, "yes", {"c": []}], "on": "x: y\n#z"}, "e": {}});
        let d = doc(&[("root".into(), Y::from(&json))]);
        let back: serde_json::Value = serde_yaml_ng::from_str(&d).unwrap();
        assert_eq!(back, serde_json::json!({ "root": json }));
    }

    #[test]
    fn yaml_user_data_keeps_its_text_and_lists_its_keys() {
        let u = parse_user_data("user_data", "#cloud-config\nntp:\n  enabled: yes\nlocale: C.UTF-8\n").unwrap();
        assert_eq!(
            u,
            UserData::Yaml {
                text: "ntp:\n  enabled: yes\nlocale: C.UTF-8\n".into(),
                keys: vec!["ntp".into(), "locale".into()]
            }
        );
    }

    #[test]
    fn json_user_data_is_accepted() {
        let u = parse_user_data("user_data", r#"{"locale": "C.UTF-8"}"#).unwrap();
        assert_eq!(u.keys(), vec!["locale".to_owned()]);
    }

    #[test]
    fn a_shell_script_is_refused_with_a_way_out() {
        let e = parse_user_data("cloud_init.user_data", "#!/bin/sh\necho hi\n").unwrap_err().to_string();
        assert!(e.starts_with("cloud_init.user_data: starts with \"#!/bin/sh\": only cloud-config"), "{e}");
    }

    #[test]
    fn a_list_is_not_cloud_config() {
        let e = parse_user_data("cloud_init.user_data", "- a\n- b\n").unwrap_err().to_string();
        assert!(e.contains("must be a mapping"), "{e}");
    }

    #[test]
    fn broken_yaml_names_the_argument_and_the_place() {
        let e = parse_user_data("cloud_init.user_data", "a: [1, 2\nb: c\n").unwrap_err().to_string();
        assert!(e.starts_with("cloud_init.user_data: is not valid YAML") && e.contains("line"), "{e}");
    }

    #[test]
    fn a_custom_tag_is_refused() {
        let e = parse_user_data("cloud_init.user_data", "a: !python/object x\n").unwrap_err().to_string();
        assert!(e.contains("YAML tag"), "{e}");
    }

    #[test]
    fn an_alias_bomb_is_an_error_not_a_hang() {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..20 {
            let p = i - 1;
            y.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse_user_data("user_data", &y).is_err());
    }

    #[test]
    fn oversized_user_data_is_refused_and_not_echoed() {
        let e = parse_user_data("user_data", &"a: b\n".repeat(20_000)).unwrap_err().to_string();
        assert!(e.contains("at most 65536") && e.len() < 200, "{e}");
    }

    #[test]
    fn an_indented_mapping_cannot_be_combined() {
        let theirs = parse_user_data("user_data", "  locale: C\n  ntp: {}\n").unwrap();
        let e = document("user_data", &[("manage_etc_hosts".into(), Y::Bool(true))], Some(&theirs)).unwrap_err();
        assert!(e.to_string().contains("block mapping"), "{e}");
    }

    #[test]
    fn user_yaml_follows_the_generated_keys() {
        let theirs = parse_user_data("user_data", "#cloud-config\nlocale: C\n").unwrap();
        let d = document("user_data", &[("manage_etc_hosts".into(), Y::Bool(true))], Some(&theirs)).unwrap();
        assert_eq!(d, "#cloud-config\nmanage_etc_hosts: true\nlocale: C\n");
    }
}
