//! The tool list as a client sees it, compared with `tests/golden/tools_list.json` so
//! that every schema, description or annotation change is deliberate. Refresh with
//! `UPDATE_GOLDEN=1 cargo nextest run mcp::golden`.

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tools_list.json");

#[tokio::test]
async fn tools_list_matches_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let actual = serde_json::to_string_pretty(&serde_json::json!({ "tools": tools })).expect("json") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    assert!(
        actual == expected,
        "tools/list changed; if that is intended, run UPDATE_GOLDEN=1 cargo nextest run mcp::golden\n{actual}"
    );
}

/// The whole `tools/list` result and the part a model reads (names, titles,
/// descriptions, input schemas), in bytes of compact JSON.
fn sizes(tools: &[rmcp::model::Tool]) -> (usize, usize) {
    let whole = serde_json::to_vec(&serde_json::json!({ "tools": tools })).expect("json").len();
    let visible: Vec<serde_json::Value> = tools
        .iter()
        .map(|t| serde_json::json!({ "name": t.name, "title": t.title, "description": t.description, "inputSchema": t.input_schema }))
        .collect();
    (whole, serde_json::to_vec(&visible).expect("json").len())
}

fn walk(schema: &serde_json::Value, input: bool, tool: &str, problems: &mut Vec<String>) {
    const STANDARD: &[&str] = &["ipv4", "ipv6", "date-time", "uri", "hostname", "uuid", "email"];
    match schema {
        serde_json::Value::Object(m) => {
            if let Some(f) = m.get("format").and_then(|f| f.as_str())
                && !STANDARD.contains(&f)
            {
                problems.push(format!("{tool}: non-standard format {f:?}"));
            }
            if input && m.get("type").is_some_and(serde_json::Value::is_array) {
                problems.push(format!("{tool}: type array {} in the input", m["type"]));
            }
            m.values().for_each(|v| walk(v, input, tool, problems));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, input, tool, problems)),
        _ => {}
    }
}

#[tokio::test]
async fn tools_list_fits_a_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let (whole, visible) = sizes(&tools);
    println!("tools/list: {} tools, {whole} bytes whole, {visible} bytes model-visible", tools.len());
    let mut problems = Vec::new();
    for t in &tools {
        if t.title.as_deref().is_none_or(str::is_empty) {
            problems.push(format!("{}: no title", t.name));
        }
        walk(&serde_json::Value::Object((*t.input_schema).clone()), true, &t.name, &mut problems);
        if let Some(out) = &t.output_schema {
            walk(&serde_json::Value::Object((**out).clone()), false, &t.name, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(whole <= 48 * 1024, "tools/list is {whole} bytes, over 48 KiB");
    assert!(visible <= 24 * 1024, "the model-visible part is {visible} bytes, over 24 KiB");
}
