//! The README's tool table is generated from `tools/list`; this test fails when they
//! differ. Refresh with `UPDATE_GOLDEN=1 cargo nextest run readme_tool_table`.

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
const BEGIN: &str = "<!-- tools:begin (generated from tools/list by tests/mcp/readme.rs; do not edit) -->";
const END: &str = "<!-- tools:end -->";

/// The first sentence of a description, made safe for a table cell.
fn first_sentence(text: &str) -> String {
    let text = text.split("\n\n").next().unwrap_or_default();
    let end = text.find(". ").map_or(text.len(), |i| i + 1);
    text[..end].replace('|', "\\|").replace('\n', " ")
}

fn table(tools: &[rmcp::model::Tool]) -> String {
    let mut out = String::from("| Tool | Arguments (`?` optional) | What it does |\n|---|---|---|\n");
    for t in tools {
        let schema = &t.input_schema;
        let required: Vec<&str> = schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let args: Vec<String> = schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| {
                p.keys().map(|k| if required.contains(&k.as_str()) { k.clone() } else { format!("{k}?") }).collect()
            })
            .unwrap_or_default();
        let args = if args.is_empty() { "—".to_owned() } else { args.join(", ") };
        let about = first_sentence(t.description.as_deref().unwrap_or_default());
        let title = t.title.as_deref().unwrap_or_default();
        out.push_str(&format!("| `{}` | {args} | **{title}.** {about} |\n", t.name));
    }
    out
}

#[tokio::test]
async fn readme_tool_table_matches_tools_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::common::mcp::client(dir.path()).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let readme = std::fs::read_to_string(README).expect("README.md");
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md lacks the tool table markers:\n{BEGIN}\n{END}");
    };
    let wanted = format!("{BEGIN}\n{}{END}", table(&tools));
    let actual = &readme[b..e + END.len()];
    if std::env::var_os("UPDATE_GOLDEN").is_some() && actual != wanted {
        std::fs::write(README, format!("{}{wanted}{}", &readme[..b], &readme[e + END.len()..])).expect("write README");
        return;
    }
    assert!(
        actual == wanted,
        "README.md's tool table differs from tools/list; run UPDATE_GOLDEN=1 cargo nextest run readme_tool_table\n{wanted}"
    );
}
