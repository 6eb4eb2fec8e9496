//! Rate limits per session and per client: ten agents on one host under the defaults
//! get no 429, a flooding session does, and its flood does not spill onto the others.

use serde_json::json;

use crate::common::http::{Conn, Server, initialize, open_session, ping};

/// Ten agents at once, each opening six sessions (60 quick `initialize`s from one
/// address) and then pinging twenty times in its last session.
#[tokio::test]
async fn ten_agents_on_one_host_get_no_429_under_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let agents = (0..10).map(|_| {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut conn = Conn::open_to(addr).await;
            for i in 0..5 {
                statuses.push(conn.post_mcp(None, &initialize(i)).await.status);
            }
            let session = open_session(&mut conn).await;
            for i in 0..20 {
                statuses.push(conn.post_mcp(Some(&session), &ping(i)).await.status);
            }
            statuses
        })
    });

    let statuses: Vec<u16> = futures::future::join_all(agents).await.into_iter().flat_map(Result::unwrap).collect();

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn flooding_session_gets_429_and_other_sessions_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &json!({}), &["--no-auth"]);
    let mut calm = Conn::open(&server).await;
    let calm_session = open_session(&mut calm).await;
    let mut flood = Conn::open(&server).await;
    let flood_session = open_session(&mut flood).await;

    let mut sent = 0u64;
    let refused = loop {
        sent += 1;
        let r = flood.post_mcp(Some(&flood_session), &ping(sent)).await;
        if r.status != 200 || sent == 5000 {
            break r;
        }
    };
    let calm_answer = calm.post_mcp(Some(&calm_session), &ping(1)).await;

    eprintln!("flood: request {sent} of one session was refused with {}", refused.status);
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.header("retry-after").is_some_and(|s| s.parse::<u64>().unwrap() >= 1), "{refused:?}");
    assert_eq!(calm_answer.status, 200, "{calm_answer:?}");
}

#[tokio::test]
async fn flood_outside_sessions_gets_429_from_the_client_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({ "rate_limit": { "client_per_second": 1, "client_burst": 5 } });
    let server = Server::start(dir.path(), &cfg, &["--no-auth"]);
    let mut conn = Conn::open(&server).await;

    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(conn.post_mcp(None, &initialize(i)).await.status);
    }

    assert!(statuses.contains(&429), "{statuses:?}");
}
