//! Tool arguments: [`Parameters`] replaces rmcp's extractor of the same name (the
//! `#[tool]` macro finds the input schema by that name) so that a wrong argument is
//! reported the way a model can fix it: the argument's path, what was expected in
//! plain words, and what came, quoted to at most [`QUOTE_MAX`] characters.
//! `invalid type: string "abc", expected u64` becomes
//! ``argument `memory_mib`: expected a non-negative integer, got a string "abc"``.
//!
//! The server answers these as tool errors (`isError: true`), which the model sees,
//! rather than JSON-RPC errors, which hosts hide from it: see [`into_tool_error`].

use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{CallToolResult, ContentBlock, ErrorCode};
use rmcp::{ErrorData, schemars};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The most characters of a caller's value an error message quotes.
pub const QUOTE_MAX: usize = 200;

/// The most characters of a tool error's text; the rest is cut.
const ERROR_TEXT_MAX: usize = 4000;

/// Marks an `invalid_params` error as one about the tool's arguments.
const ARGUMENT_ERROR: &str = "kvm-mcp/argument-error";

/// A tool's arguments, parsed from the call's `arguments` object.
#[derive(Debug)]
pub struct Parameters<T>(pub T);

impl<T: schemars::JsonSchema> schemars::JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<T> {
    fn from_context_part(context: &mut ToolCallContext<S>) -> Result<Self, ErrorData> {
        let arguments = Value::Object(context.arguments.take().unwrap_or_default());
        parse(&arguments)
            .map(Parameters)
            .map_err(|message| ErrorData::invalid_params(message, Some(Value::String(ARGUMENT_ERROR.into()))))
    }
}

/// Parses `arguments` as `T`, or says which argument is wrong and how.
///
/// # Errors
/// The message for the model.
pub fn parse<T: DeserializeOwned>(arguments: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(arguments).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        if let Some(rest) = inner.strip_prefix("unknown field ") {
            // The path already ends in the unknown name.
            let expected = rest.split_once(", ").map_or("", |(_, e)| e);
            return format!("unknown argument `{}`; {}", clip(&path), clip_quoted(expected));
        }
        if let Some(field) = inner.strip_prefix("missing field `").and_then(|f| f.strip_suffix('`')) {
            let full = if path == "." { field.to_owned() } else { format!("{path}.{field}") };
            return format!("missing argument `{}`", clip(&full));
        }
        let at = value_at(arguments, e.path());
        let what = match (expected_of(&inner), at) {
            (Some(expected), Some(value)) if inner.starts_with("invalid ") => {
                format!("expected {}, got {}", plain(expected), describe(value))
            }
            _ => clip_quoted(&inner),
        };
        if path == "." { format!("arguments: {what}") } else { format!("argument `{}`: {what}", clip(&path)) }
    })
}

/// Turns an argument error from [`Parameters`] into the tool error the model sees.
/// Any other error is left as it is.
///
/// # Errors
/// `e` itself when it is not an argument error.
pub fn into_tool_error(e: ErrorData) -> Result<CallToolResult, ErrorData> {
    if e.code == ErrorCode::INVALID_PARAMS && e.data.as_ref().and_then(Value::as_str) == Some(ARGUMENT_ERROR) {
        Ok(CallToolResult::error(vec![ContentBlock::text(e.message.into_owned())]))
    } else {
        Err(e)
    }
}

/// Clips every text block of a tool error: quoted runs to [`QUOTE_MAX`] characters,
/// the whole to a few thousand, so a huge bad value never comes back whole.
pub fn clip_error_text(result: &mut CallToolResult) {
    if result.is_error != Some(true) {
        return;
    }
    for block in &mut result.content {
        if let Some(t) = block.as_text()
            && t.text.len() > QUOTE_MAX
        {
            let mut text = clip_quoted(&t.text);
            if text.chars().count() > ERROR_TEXT_MAX {
                text = format!("{}… (cut)", text.chars().take(ERROR_TEXT_MAX).collect::<String>());
            }
            *block = ContentBlock::text(text);
        }
    }
}

/// The text after the last ", expected " of a serde message.
fn expected_of(message: &str) -> Option<&str> {
    message.rfind(", expected ").map(|i| &message[i + ", expected ".len()..])
}

/// serde's Rust-flavoured expectations in words.
fn plain(expected: &str) -> String {
    match expected {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" => "an object".into(),
        "path string" => "a path string".into(),
        e if e.starts_with("struct ") || e.starts_with("internally tagged enum") => "an object".into(),
        e => clip_quoted(e),
    }
}

/// The JSON type and (clipped) value of what the caller sent.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {}", clip(&n.to_string())),
        Value::String(s) => format!("a string {}", quote(s)),
        Value::Array(a) => format!("an array of {} item(s)", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

/// `s` in double quotes, cut to [`QUOTE_MAX`] characters with its length noted.
#[must_use]
pub fn quote(s: &str) -> String {
    let n = s.chars().count();
    if n <= QUOTE_MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(QUOTE_MAX).collect();
        format!("{head:?}… ({n} characters)")
    }
}

/// `s` cut to [`QUOTE_MAX`] characters.
fn clip(s: &str) -> String {
    let n = s.chars().count();
    if n <= QUOTE_MAX {
        s.to_owned()
    } else {
        format!("{}… ({n} characters)", s.chars().take(QUOTE_MAX).collect::<String>())
    }
}

/// Cuts every run between quotes (`"…"` or `` `…` ``) longer than [`QUOTE_MAX`]
/// characters, and a tail with no closing quote likewise.
#[must_use]
pub fn clip_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * QUOTE_MAX));
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let q = rest[open..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=open]);
        let body = &rest[open + 1..];
        // A quote inside a Rust-escaped string is `\"`; skip escaped ones.
        let close = find_closing(body, q);
        let (inner, after) = match close {
            Some(c) => (&body[..c], &body[c..]),
            None => (body, ""),
        };
        out.push_str(&clip(inner));
        match after.chars().next() {
            Some(c) => {
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

fn find_closing(body: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            '\\' if q == '"' && !escaped => escaped = true,
            c if c == q && !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// The value `path` points at inside `root`, when it is there.
fn value_at<'a>(root: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    let mut at = root;
    for segment in path {
        at = match segment {
            serde_path_to_error::Segment::Seq { index } => at.get(*index)?,
            serde_path_to_error::Segment::Map { key } => at.get(key.as_str())?,
            serde_path_to_error::Segment::Enum { .. } => at,
            serde_path_to_error::Segment::Unknown => return None,
        };
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::{QUOTE_MAX, clip_quoted, parse};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Args {
        memory_mib: Option<u64>,
        vcpus: Option<u32>,
        #[serde(default)]
        nics: Vec<Nic>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Nic {
        network: String,
    }

    fn err(v: serde_json::Value) -> String {
        parse::<Args>(&v).expect_err("must fail")
    }

    #[test]
    fn wrong_types_name_the_argument_in_plain_words() {
        assert_eq!(
            err(json!({"memory_mib": "abc"})),
            "argument `memory_mib`: expected a non-negative integer, got a string \"abc\""
        );
        assert_eq!(
            err(json!({"vcpus": 5_000_000_000_u64})),
            "argument `vcpus`: expected an integer from 0 to 4294967295, got the number 5000000000"
        );
        assert_eq!(
            err(json!({"nics": [{"network": 7}]})),
            "argument `nics[0].network`: expected a string, got the number 7"
        );
        assert_eq!(err(json!({"nics": {}})), "argument `nics`: expected an array, got an object");
        assert_eq!(err(json!({"memry": 1})), "unknown argument `memry`; expected one of `memory_mib`, `vcpus`, `nics`");
        assert_eq!(err(json!({"nics": [{}]})), "missing argument `nics[0].network`");
    }

    #[test]
    fn huge_values_are_quoted_in_part() {
        let big = "x".repeat(10 << 20);
        let e = err(json!({ "memory_mib": big }));
        assert!(e.len() < 2 * QUOTE_MAX + 200, "{} bytes", e.len());
        assert!(e.contains("(10485760 characters)"), "{e}");
        let e = err(json!({ big.clone(): 1 }));
        assert!(e.len() < 4 * QUOTE_MAX + 400, "{} bytes: {}", e.len(), &e[..300]);
    }

    #[test]
    fn clipping_keeps_short_quotes_and_cuts_long_ones() {
        assert_eq!(clip_quoted("bad `a` and \"b\""), "bad `a` and \"b\"");
        let long = format!("bad \"{}\" here", "y".repeat(500));
        let got = clip_quoted(&long);
        assert!(got.starts_with("bad \"yyy") && got.ends_with("… (500 characters)\" here"), "{got}");
    }
}
