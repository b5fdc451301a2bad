//! Cron schedules: validation, partial updates, actions through the same
//! services as the API, and one real firing shared by two hosts.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Options, Server};
use serde_json::{Value, json};

async fn deploy(server: &Server, token: &str) -> String {
    let agent = server.deploy(token, "testkit", None).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    agent["id"].as_str().unwrap().to_string()
}

async fn create(server: &Server, token: &str, id: &str, body: Value) -> Value {
    let (status, schedule) = server.post(token, &format!("/api/agents/{id}/schedules"), body).await;
    assert_eq!(status, 201, "{schedule}");
    schedule
}

async fn patch(server: &Server, token: &str, path: &str, body: Value) -> (u16, Value) {
    let response = server.http.patch(format!("{}{path}", server.url)).bearer_auth(token).json(&body).send().await.unwrap();
    common::split(response).await
}

async fn pid_of(server: &Server, token: &str, id: &str) -> i64 {
    let (_, health) = server.get(token, &format!("/api/agents/{id}/health")).await;
    health["runtime"]["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {health}"))
}

#[tokio::test]
async fn schedules_are_validated_and_patched_partially() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;

    let schedule = create(&server, &token, &id, json!({"name": "Daily backup", "cron": "0 2 * * *", "action": "backup", "enabled": true})).await;
    let schedule_id = schedule["id"].as_str().unwrap().to_string();
    assert!(schedule_id.starts_with("sch_"), "{schedule}");
    assert_eq!(schedule["cron"], "0 2 * * *");
    assert!(schedule["nextRunAt"].as_str().unwrap().ends_with("T02:00:00.000Z"), "{schedule}");
    assert!(schedule["lastRunAt"].is_null());

    let cases = [
        ("* * * *", "4 fields"),
        ("0 0 * * * *", "6 fields"),
        ("61 * * * *", "61"),
        ("every day", "fields"),
        ("0 0 1 * MON", "both"),
        ("@fortnightly", "shorthand"),
    ];
    for (cron, reason) in cases {
        let (status, body) = server.post(&token, &format!("/api/agents/{id}/schedules"), json!({"name": "x", "cron": cron, "action": "restart"})).await;
        assert_eq!(status, 400, "{cron}: {body}");
        assert_eq!(body["code"], "invalid_cron", "{body}");
        let message = body["message"].as_str().unwrap().to_lowercase();
        assert!(message.contains(&reason.to_lowercase()), "{cron}: {message}");
    }
    let (status, body) = server.post(&token, &format!("/api/agents/{id}/schedules"), json!({"name": "x", "cron": "* * * * *", "action": "reboot"})).await;
    assert_eq!(status, 400, "unknown action: {body}");
    for accepted in ["@daily", "*/5 9-17 * * MON-FRI", "0 0 1 JAN *"] {
        create(&server, &token, &id, json!({"name": accepted, "cron": accepted, "action": "backup"})).await;
    }

    // Only the fields sent change.
    let path = format!("/api/agents/{id}/schedules/{schedule_id}");
    let (status, updated) = patch(&server, &token, &path, json!({"name": "Nightly"})).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["name"], "Nightly");
    assert_eq!(updated["cron"], "0 2 * * *");
    assert_eq!(updated["action"], "backup");
    assert_eq!(updated["enabled"], true);
    let (_, disabled) = patch(&server, &token, &path, json!({"enabled": false})).await;
    assert_eq!(disabled["enabled"], false);
    assert!(disabled["nextRunAt"].is_null(), "a disabled schedule has no next run: {disabled}");
    let (status, body) = patch(&server, &token, &path, json!({"cron": "bad"})).await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = server.get(&token, &format!("/api/agents/{id}/schedules")).await;
    assert_eq!(list["schedules"][0]["cron"], "0 2 * * *", "a rejected patch changed the schedule");

    let (status, _) = server.delete(&token, &path).await;
    assert_eq!(status, 204);
    let (status, _) = server.delete(&token, &path).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn schedules_enforce_scope_and_ownership() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let read = server.create_token("ops@example.com", "read");
    let other = server.user_with_token("other@example.com");
    let id = deploy(&server, &token).await;
    let schedule = create(&server, &token, &id, json!({"name": "n", "cron": "0 3 * * *", "action": "restart"})).await;
    let path = format!("/api/agents/{id}/schedules");

    let (status, _) = server.get(&read, &path).await;
    assert_eq!(status, 200);
    let (status, _) = server.post(&read, &path, json!({"name": "n", "cron": "0 3 * * *", "action": "restart"})).await;
    assert_eq!(status, 403);
    let (status, _) = server.get(&other, &path).await;
    assert_eq!(status, 404);
    let (status, _) = server.delete(&other, &format!("{path}/{}", schedule["id"].as_str().unwrap())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn scheduled_actions_run_like_api_calls() {
    let options = Options { extra_config: "[backups]\nquota_bytes = 1000000000\n".into(), ..Options::default() };
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;

    let restart = create(&server, &token, &id, json!({"name": "r", "cron": "0 4 * * *", "action": "restart"})).await;
    let before = pid_of(&server, &token, &id).await;
    let (status, ran) = server.post_empty(&token, &format!("/api/agents/{id}/schedules/{}/run", restart["id"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["lastStatus"], "ok", "{ran}");
    assert!(ran["lastRunAt"].is_string());
    assert_ne!(pid_of(&server, &token, &id).await, before, "the scheduled restart started a new process");

    let backup = create(&server, &token, &id, json!({"name": "b", "cron": "0 5 * * *", "action": "backup"})).await;
    let (_, ran) = server.post_empty(&token, &format!("/api/agents/{id}/schedules/{}/run", backup["id"].as_str().unwrap())).await;
    assert_eq!(ran["lastStatus"], "ok", "{ran}");
    let (_, backups) = server.get(&token, &format!("/api/agents/{id}/workspace/backups")).await;
    assert_eq!(backups["backups"].as_array().unwrap().len(), 1, "{backups}");
}

#[tokio::test]
async fn failed_run_is_recorded_and_the_scheduler_survives() {
    let options = Options { extra_config: "[backups]\nquota_bytes = 10\n".into(), ..Options::default() };
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let backup = create(&server, &token, &id, json!({"name": "b", "cron": "0 5 * * *", "action": "backup"})).await;
    let run = format!("/api/agents/{id}/schedules/{}/run", backup["id"].as_str().unwrap());

    let (status, ran) = server.post_empty(&token, &run).await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["lastStatus"], "error", "{ran}");
    assert!(ran["lastError"].as_str().unwrap().contains("quota"), "{ran}");
    let (_, events) = server.get(&token, &format!("/api/agents/{id}/events")).await;
    assert!(events.to_string().contains("failed to backup"), "{events}");

    let restart = create(&server, &token, &id, json!({"name": "r", "cron": "0 4 * * *", "action": "restart"})).await;
    let (_, ran) = server.post_empty(&token, &format!("/api/agents/{id}/schedules/{}/run", restart["id"].as_str().unwrap())).await;
    assert_eq!(ran["lastStatus"], "ok", "the scheduler keeps working after a failure: {ran}");
}

/// Starts a second host on the same data directory and database.
fn second_host(server: &Server) -> std::process::Child {
    let config_path = server.data_dir.path().join("agentstead.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let first_listen = config.lines().find(|line| line.starts_with("listen")).unwrap().to_string();
    let second = config.replace(&first_listen, &format!("listen = \"127.0.0.1:{port}\""));
    let second_path = server.data_dir.path().join("second.toml");
    std::fs::write(&second_path, second).unwrap();
    Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&second_path)
        .env("AGENTSTEAD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A `* * * * *` schedule fires within about a minute, and two hosts on one
/// database run that firing once.
#[tokio::test]
async fn real_cron_fires_once_across_two_hosts() {
    let options = Options { extra_config: "[backups]\nquota_bytes = 1000000000\n".into(), ..Options::default() };
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let mut second = second_host(&server);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(second.try_wait().unwrap().is_none(), "the second host exited");

    let schedule = create(&server, &token, &id, json!({"name": "every minute", "cron": "* * * * *", "action": "backup"})).await;
    let schedule_id = schedule["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(75);
    let fired = loop {
        let (_, list) = server.get(&token, &format!("/api/agents/{id}/schedules")).await;
        let current = list["schedules"][0].clone();
        if current["lastRunAt"].is_string() || Instant::now() >= deadline {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(fired["lastStatus"], "ok", "no firing within 75 s: {fired}");

    // Stop further firings, then let the other host's copy of this one end.
    let (_, disabled) = patch(&server, &token, &format!("/api/agents/{id}/schedules/{schedule_id}"), json!({"enabled": false})).await;
    assert_eq!(disabled["enabled"], false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = second.kill();
    let _ = second.wait();

    let (_, backups) = server.get(&token, &format!("/api/agents/{id}/workspace/backups")).await;
    assert_eq!(backups["backups"].as_array().unwrap().len(), 1, "one firing made one backup: {backups}");
    let store = agentstead::store::Store::open_sqlite(&server.data_dir.path().join("agentstead.db")).await.unwrap();
    assert_eq!(store.schedule_run_count(&schedule_id).await.unwrap(), 1, "two hosts claimed one firing twice");
}

#[tokio::test]
async fn deleting_an_agent_deletes_its_schedules() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let schedule = create(&server, &token, &id, json!({"name": "n", "cron": "* * * * *", "action": "restart"})).await;
    let schedule_id = schedule["id"].as_str().unwrap();

    let (status, _) = server.delete(&token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = server.get(&token, &format!("/api/agents/{id}/schedules")).await;
    assert_eq!(status, 404);
    let store = agentstead::store::Store::open_sqlite(&server.data_dir.path().join("agentstead.db")).await.unwrap();
    assert!(store.schedule(schedule_id).await.unwrap().is_none(), "the schedule row outlived its agent");
}
