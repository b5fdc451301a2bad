//! Agents as real local processes, through the `testkit` agent type
//! (`python3 -m http.server` as the agent) and the `runtime-process` plugin.

mod common;

use std::time::Duration;

use common::{Options, Server, processes_under, session_members};
use serde_json::Value;

fn id_of(agent: &Value) -> String {
    agent["id"].as_str().unwrap().to_string()
}

async fn pid_of(server: &Server, token: &str, id: &str) -> i32 {
    let (status, health) = server.get(token, &format!("/api/agents/{id}/health")).await;
    assert_eq!(status, 200, "{health}");
    health["runtime"]["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {health}")) as i32
}

#[tokio::test]
async fn deployed_agent_reports_health_logs_metrics() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let agent = server.deploy(&token, "testkit", None).await;
    let id = id_of(&agent);
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    assert!(id.starts_with("tk-"), "{id}");
    assert_eq!(id.len(), 9, "{id}");
    assert_eq!(agent["name"], id.as_str(), "name defaults to the id");

    // The public URL reaches the real agent process.
    let public_url = agent["publicUrl"].as_str().unwrap();
    let page = server.http.get(public_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "{public_url}");

    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["probe"]["httpStatus"], 200, "{health}");
    assert_eq!(health["runtime"]["state"], "running", "{health}");

    // python's http.server logs each request it serves to stderr.
    let (_, logs) = server.get(&token, &format!("/api/agents/{id}/logs?tail=50")).await;
    let lines = logs["lines"].as_array().unwrap();
    assert!(lines.iter().any(|line| line.as_str().unwrap().contains("\"GET / HTTP/1.1\" 200")), "{logs}");
    let (status, _) = server.get(&token, &format!("/api/agents/{id}/logs?tail=0")).await;
    assert_eq!(status, 400, "tail=0 is out of range");

    let (_, metrics) = server.get(&token, &format!("/api/agents/{id}/metrics")).await;
    assert!(metrics["memoryBytes"].as_u64().unwrap() > 1_000_000, "{metrics}");
    assert!(metrics["processes"].as_u64().unwrap() >= 1, "{metrics}");
    assert!(metrics["cpuPercent"].as_f64().unwrap() >= 0.0, "{metrics}");

    // The driver's config file landed in the workspace.
    let workspace = server.data_dir.path().join("agents").join(&id).join("workspace");
    let written = std::fs::read_to_string(workspace.join("testkit.txt")).unwrap();
    assert_eq!(written, format!("agent {id}\n"));
}

#[tokio::test]
async fn stop_then_start_restart_redeploy() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = id_of(&server.deploy(&token, "testkit", Some("forking")).await);
    let pid = pid_of(&server, &token, &id).await;
    assert!(session_members(pid).len() >= 2, "the forking agent has a child: {:?}", session_members(pid));

    let workspace = server.data_dir.path().join("agents").join(&id).join("workspace");
    std::fs::write(workspace.join("marker"), "kept").unwrap();

    let (status, agent) = server.post_empty(&token, &format!("/api/agents/{id}/stop?wait=true")).await;
    assert_eq!(status, 200);
    assert_eq!(agent["status"], "OFFLINE", "{agent}");
    assert!(session_members(pid).is_empty(), "processes left after stop: {:?}", session_members(pid));
    let (_, metrics) = server.get(&token, &format!("/api/agents/{id}/metrics")).await;
    assert_eq!(metrics["processes"], 0, "{metrics}");

    for action in ["start", "restart", "redeploy"] {
        let (status, agent) = server.post_empty(&token, &format!("/api/agents/{id}/{action}?wait=true")).await;
        assert_eq!(status, 200, "{action}: {agent}");
        assert_eq!(agent["status"], "ONLINE", "{action}: {agent}");
    }
    let new_pid = pid_of(&server, &token, &id).await;
    assert_ne!(new_pid, pid, "redeploy started a new process");
    assert_eq!(std::fs::read_to_string(workspace.join("marker")).unwrap(), "kept", "the workspace survives");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = id_of(&server.deploy(&token, "testkit", Some("slow-stop")).await);
    let pid = pid_of(&server, &token, &id).await;

    let started = std::time::Instant::now();
    let (_, agent) = server.post_empty(&token, &format!("/api/agents/{id}/stop?wait=true")).await;
    assert_eq!(agent["status"], "OFFLINE", "{agent}");
    assert!(started.elapsed() >= Duration::from_millis(900), "stop returned before the 1 s grace period");
    assert!(session_members(pid).is_empty(), "the agent ignored SIGTERM and survived");
    assert!(server.log().contains("grace period"), "the escalation is logged");
}

#[tokio::test]
async fn crashing_agent_goes_to_error_with_its_output() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let agent = server.deploy(&token, "testkit", Some("crash")).await;
    assert_eq!(agent["status"], "ERROR", "{agent}");
    let message = agent["statusMessage"].as_str().unwrap();
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(message.contains("testkit crashing"), "the agent's own output is quoted: {message}");
}

#[tokio::test]
async fn agent_failing_its_probe_goes_to_error() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let agent = server.deploy(&token, "testkit", Some("unhealthy")).await;
    assert_eq!(agent["status"], "ERROR", "{agent}");
    let message = agent["statusMessage"].as_str().unwrap();
    assert!(message.contains("/no-such-page"), "{message}");
    assert!(message.contains("HTTP 404"), "{message}");
}

#[tokio::test]
async fn missing_program_names_the_program_and_the_fix() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let agent = server.deploy(&token, "openfang", None).await;
    assert!(agent["id"].as_str().unwrap().starts_with("of-"), "{agent}");
    assert_eq!(agent["status"], "ERROR", "{agent}");
    let message = agent["statusMessage"].as_str().unwrap();
    assert!(message.contains("`openfang`"), "{message}");
    assert!(message.contains("PATH"), "{message}");
    assert!(message.contains("install"), "the message says how to install it: {message}");
}

#[tokio::test]
async fn concurrent_operation_gets_409() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = id_of(&server.deploy(&token, "testkit", Some("slow-stop")).await);

    let (status, _) = server.post_empty(&token, &format!("/api/agents/{id}/stop")).await;
    assert_eq!(status, 200);
    let (status, body) = server.post_empty(&token, &format!("/api/agents/{id}/start")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "agent_busy");
    assert!(body["message"].as_str().unwrap().contains(&id), "{body}");
    server.wait_for_status(&token, &id, "OFFLINE", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn host_restart_adopts_running_agent() {
    let mut server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = id_of(&server.deploy(&token, "testkit", None).await);
    let pid = pid_of(&server, &token, &id).await;

    server.kill();
    server.launch().await;
    let agent = server.wait_for_status(&token, &id, "ONLINE", Duration::from_secs(10)).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pid_of(&server, &token, &id).await, pid, "the running process was adopted");
    let agent_processes = processes_under(server.data_dir.path());
    assert_eq!(agent_processes.len(), 1, "exactly one agent process: {agent_processes:?}");
}

#[tokio::test]
async fn host_restart_starts_dead_agent() {
    let mut server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = id_of(&server.deploy(&token, "testkit", None).await);
    let pid = pid_of(&server, &token, &id).await;

    server.kill();
    server.kill_agents();
    server.launch().await;

    // The row still shows ONLINE until the reconcile pass has run, so wait
    // for a running process other than the killed one.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let health = loop {
        let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
        let restarted = health["runtime"]["pid"].as_i64().is_some_and(|new_pid| new_pid != i64::from(pid));
        if (restarted && health["status"] == "ONLINE") || std::time::Instant::now() >= deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health["status"], "ONLINE", "{health}");
    assert_ne!(health["runtime"]["pid"].as_i64(), Some(i64::from(pid)), "{health}");
    let (_, events) = server.get(&token, &format!("/api/agents/{id}/events")).await;
    assert!(events.to_string().contains("host restart"), "{events}");
}

#[tokio::test]
async fn reconcile_marks_dead_agent() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = id_of(&server.deploy(&token, "testkit", None).await);
    let pid = pid_of(&server, &token, &id).await;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let agent = server.wait_for_status(&token, &id, "ERROR", Duration::from_secs(10)).await;
    assert_eq!(agent["status"], "ERROR", "{agent}");
    assert!(agent["statusMessage"].as_str().unwrap().contains("signal 9"), "{agent}");

    let (status, agent) = server.post_empty(&token, &format!("/api/agents/{id}/start?wait=true")).await;
    assert_eq!(status, 200);
    assert_eq!(agent["status"], "ONLINE", "start recovers it: {agent}");
}

#[tokio::test]
async fn delete_removes_processes_and_workspace() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = id_of(&server.deploy(&token, "testkit", None).await);
    let pid = pid_of(&server, &token, &id).await;

    let (status, _) = server.delete(&token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 204);
    assert!(session_members(pid).is_empty());
    assert!(!server.data_dir.path().join("agents").join(&id).exists());
    let (status, _) = server.get(&token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn program_outside_the_allowlist_is_refused() {
    // The default allowlist names the four agent programs; `sh` is not on it.
    let server = Server::start_with(Options::default()).await;
    let token = server.user_with_token("ops@example.com");
    std::fs::write(
        server.data_dir.path().join("agentstead.toml"),
        std::fs::read_to_string(server.data_dir.path().join("agentstead.toml"))
            .unwrap()
            .replace(r#"allowed_programs = ["sh", "python3","#, r#"allowed_programs = ["python3","#),
    )
    .unwrap();
    let mut server = server;
    server.kill();
    server.launch().await;
    let agent = server.deploy(&token, "testkit", None).await;
    assert_eq!(agent["status"], "ERROR", "{agent}");
    let message = agent["statusMessage"].as_str().unwrap();
    assert!(message.contains("`sh`"), "{message}");
    assert!(message.contains("allowed_programs"), "{message}");
}
