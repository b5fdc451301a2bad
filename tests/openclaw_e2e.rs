//! End to end with the real OpenClaw gateway on the process runtime.
//!
//! Needs `openclaw` (2026.9 or newer, with Node.js 24) in
//! `AGENTSTEAD_OPENCLAW_BIN_DIR` or on `PATH`. Without it the test is skipped
//! with a message, unless `AGENTSTEAD_REQUIRE_OPENCLAW=1`, as in CI, makes the
//! absence a failure.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Options, Server, processes_under};
use serde_json::json;

fn openclaw_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("AGENTSTEAD_OPENCLAW_BIN_DIR").map(PathBuf::from).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|dir| dir.join("openclaw").is_file())
}

#[tokio::test]
async fn openclaw_deploys_to_online_and_runs_its_lifecycle() {
    let Some(bin_dir) = openclaw_bin_dir() else {
        if std::env::var("AGENTSTEAD_REQUIRE_OPENCLAW").as_deref() == Ok("1") {
            panic!("AGENTSTEAD_REQUIRE_OPENCLAW=1 but no `openclaw` in AGENTSTEAD_OPENCLAW_BIN_DIR or PATH");
        }
        eprintln!("\n*** SKIPPED openclaw end-to-end test: `openclaw` is not installed. ***\n*** Set AGENTSTEAD_OPENCLAW_BIN_DIR to the directory that holds it (see README). ***\n");
        return;
    };
    let server = Server::start_with(Options { search_path: vec![bin_dir.clone()], ..Options::default() }).await;
    let token = server.user_with_token("ops@example.com");

    // Deploy returns 201 at once with an `oc-` id, then the agent becomes ONLINE.
    let started = Instant::now();
    let (status, agent) = server.post(&token, "/api/agents/deploy", json!({"agentType": "openclaw", "region": "eu"})).await;
    assert_eq!(status, 201, "{agent}");
    let id = agent["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("oc-"), "{id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent = loop {
        let (_, agent) = server.get(&token, &format!("/api/agents/{id}")).await;
        if agent["status"] == "ONLINE" || agent["status"] == "ERROR" || Instant::now() >= deadline {
            break agent;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(agent["status"], "ONLINE", "not ONLINE within 60 s: {agent}\n{}", server.log());
    eprintln!("openclaw ONLINE after {:.1} s", started.elapsed().as_secs_f64());

    // The gateway serves its own health endpoint on the allocated port.
    let public_url = agent["publicUrl"].as_str().unwrap();
    let health = server.http.get(format!("{public_url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.text().await.unwrap().contains("live"));

    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["probe"]["httpStatus"], 200, "{health}");

    let (_, logs) = server.get(&token, &format!("/api/agents/{id}/logs?tail=500")).await;
    assert!(logs.to_string().contains("[gateway]"), "the gateway's own output: {logs}");

    let (_, metrics) = server.get(&token, &format!("/api/agents/{id}/metrics")).await;
    assert!(metrics["memoryBytes"].as_u64().unwrap() > 50_000_000, "{metrics}");

    // Stop leaves no process of the agent behind.
    let (_, agent) = server.post_empty(&token, &format!("/api/agents/{id}/stop?wait=true")).await;
    assert_eq!(agent["status"], "OFFLINE", "{agent}");
    let left = processes_under(server.data_dir.path());
    assert!(left.is_empty(), "processes left after stop: {left:?}");

    for action in ["start", "restart", "redeploy"] {
        let (status, agent) = server.post_empty(&token, &format!("/api/agents/{id}/{action}?wait=true")).await;
        assert_eq!(status, 200, "{action}: {agent}");
        assert_eq!(agent["status"], "ONLINE", "{action}: {agent}\n{}", server.log());
    }

    let (status, _) = server.delete(&token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 204);
    let left = processes_under(server.data_dir.path());
    assert!(left.is_empty(), "processes left after delete: {left:?}");
}
