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
