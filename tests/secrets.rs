//! Secrets: write-only API, encryption at rest, injection into the agent's
//! environment, key rotation.

mod common;

use std::path::Path;

use common::Server;
use serde_json::{Value, json};

/// Returns a value that appears nowhere unless the host leaks it.
fn unique_value() -> String {
    format!("sk-ant-test-{}", std::process::id()) + &"q7".repeat(12)
}

async fn pid_of(server: &Server, token: &str, id: &str) -> i32 {
    let (_, health) = server.get(token, &format!("/api/agents/{id}/health")).await;
    health["runtime"]["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {health}")) as i32
}

fn environ(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0).map(|entry| String::from_utf8_lossy(entry).into_owned()).collect()
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

async fn deploy_testkit(server: &Server, token: &str) -> String {
    let agent = server.deploy(token, "testkit", None).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    agent["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn secret_reaches_the_process_and_nothing_else() {
    let mut server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy_testkit(&server, &token).await;
    let value = unique_value();

    let (status, saved) = server.post(&token, &format!("/api/agents/{id}/secrets"), json!({"key": "ANTHROPIC_API_KEY", "value": value})).await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["secret"]["key"], "ANTHROPIC_API_KEY");
    assert_eq!(saved["agent"]["restartPending"], true, "{saved}");
    assert!(!saved.to_string().contains(&value), "the response echoes the value");

    let (status, list) = server.get(&token, &format!("/api/agents/{id}/secrets")).await;
    assert_eq!(status, 200);
    assert_eq!(list["secrets"][0]["key"], "ANTHROPIC_API_KEY");
    assert!(list["secrets"][0]["updatedAt"].is_string(), "{list}");
    assert_eq!(list["secrets"][0].as_object().unwrap().len(), 2, "only key and updatedAt: {list}");
    assert!(!list.to_string().contains(&value));

    let before = pid_of(&server, &token, &id).await;
    assert!(!environ(before).iter().any(|entry| entry.starts_with("ANTHROPIC_API_KEY=")), "applied before a restart");
    let (_, agent) = server.post_empty(&token, &format!("/api/agents/{id}/restart?wait=true")).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    assert_eq!(agent["restartPending"], false, "{agent}");
    let pid = pid_of(&server, &token, &id).await;
    let expected = format!("ANTHROPIC_API_KEY={value}");
    assert!(environ(pid).contains(&expected), "the agent's environment lacks the secret");

    // The plaintext is in no file of the data directory (database, WAL,
    // workspace, agent log) and not in the server's log.
    server.kill();
    let leaks = files_containing(server.data_dir.path(), value.as_bytes());
    assert!(leaks.is_empty(), "plaintext found in {leaks:?}");
    // The row is in the database file or in its write-ahead log.
    let ciphertexts = files_containing(server.data_dir.path(), b"age-encryption.org/v1");
    assert!(ciphertexts.iter().any(|path| path.contains("agentstead.db")), "no age ciphertext in the database: {ciphertexts:?}");
}

#[tokio::test]
async fn secrets_need_full_scope_and_ownership() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let deploy = server.create_token("ops@example.com", "read,deploy");
    let other = server.user_with_token("other@example.com");
    let id = deploy_testkit(&server, &token).await;
    let path = format!("/api/agents/{id}/secrets");
    let body = json!({"key": "OPENAI_API_KEY", "value": "v"});

    let (status, _) = server.get(&deploy, &path).await;
    assert_eq!(status, 403);
    let (status, _) = server.post(&deploy, &path, body.clone()).await;
    assert_eq!(status, 403);
    let (status, _) = server.delete(&deploy, &format!("{path}/OPENAI_API_KEY")).await;
    assert_eq!(status, 403);

    let (status, _) = server.get(&other, &path).await;
    assert_eq!(status, 404);
    let (status, _) = server.post(&other, &path, body.clone()).await;
    assert_eq!(status, 404);

    let (status, _) = server.post(&token, &path, body).await;
    assert_eq!(status, 201);
    let (status, _) = server.delete(&other, &format!("{path}/OPENAI_API_KEY")).await;
    assert_eq!(status, 404);
    let (status, _) = server.delete(&token, &format!("{path}/OPENAI_API_KEY")).await;
    assert_eq!(status, 204);
    let (status, body) = server.delete(&token, &format!("{path}/OPENAI_API_KEY")).await;
    assert_eq!(status, 404, "deleting twice: {body}");
}

#[tokio::test]
async fn invalid_secrets_get_400_naming_the_key() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy_testkit(&server, &token).await;
    let path = format!("/api/agents/{id}/secrets");
    let value = unique_value();
    let long_key = "K".repeat(257);

    let cases: Vec<(Value, &str, &str)> = vec![
        // The document's schema rejects malformed keys and values before
        // the handler; the server's own rules add the reserved names.
        (json!({"key": "1BAD", "value": value}), "invalid_request", "field `key` must be an environment variable name"),
        (json!({"key": "BAD-NAME", "value": value}), "invalid_request", "field `key` must be an environment variable name"),
        (json!({"key": "", "value": value}), "invalid_request", "field `key`"),
        (json!({"key": long_key, "value": value}), "invalid_request", "field `key`"),
        (json!({"key": "PATH", "value": value}), "reserved_secret_key", "PATH"),
        (json!({"key": "HOME", "value": value}), "reserved_secret_key", "HOME"),
        (json!({"key": "LD_PRELOAD", "value": value}), "reserved_secret_key", "LD_PRELOAD"),
        (json!({"key": "TESTKIT_AGENT", "value": value}), "reserved_secret_key", "driver sets it"),
        (json!({"key": "TESTKIT_TOKEN", "value": value}), "reserved_secret_key", "generates it"),
        (json!({"key": "NUL_VALUE", "value": format!("{value}\u{0}x")}), "invalid_request", "field `value` must be text without NUL"),
        (json!({"key": "HUGE", "value": "x".repeat(64 * 1024 + 1)}), "invalid_request", "field `value`"),
        (json!({"key": "LIST", "value": [value]}), "invalid_request", "string"),
    ];
    for (body, code, mention) in cases {
        let (status, answer) = server.post(&token, &path, body.clone()).await;
        assert_eq!(status, 400, "{code}: {answer}");
        assert_eq!(answer["code"], code, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(mention), "`{mention}` missing from: {message}");
        assert!(!message.contains(&value), "an error message quotes the value");
    }
    let (_, list) = server.get(&token, &path).await;
    assert_eq!(list["secrets"], json!([]), "a rejected secret was stored");
    assert!(!server.log().contains(&value), "the server log contains a value");
}

#[tokio::test]
async fn secrets_per_agent_are_limited() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy_testkit(&server, &token).await;
    let path = format!("/api/agents/{id}/secrets");
    for n in 0..100 {
        let (status, body) = server.post(&token, &path, json!({"key": format!("KEY_{n}"), "value": "v"})).await;
        assert_eq!(status, 201, "secret {n}: {body}");
    }
    let (status, body) = server.post(&token, &path, json!({"key": "KEY_100", "value": "v"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "too_many_secrets", "{body}");
    assert!(body["message"].as_str().unwrap().contains("100"), "{body}");
    let (status, _) = server.post(&token, &path, json!({"key": "KEY_7", "value": "replaced"})).await;
    assert_eq!(status, 200, "replacing an existing key stays possible");
}

#[tokio::test]
async fn zeroclaw_rejects_unknown_zeroclaw_variables() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    // ZeroClaw is not installed here: the agent settles in ERROR but exists.
    let agent = server.deploy(&token, "zeroclaw", None).await;
    let id = agent["id"].as_str().unwrap();
    let path = format!("/api/agents/{id}/secrets");

    let (status, body) = server.post(&token, &path, json!({"key": "ZEROCLAW_SOMETHING", "value": "v"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "reserved_secret_key", "{body}");
    assert!(body["message"].as_str().unwrap().contains("ZEROCLAW_SOMETHING"), "{body}");
    let (status, _) = server.post(&token, &path, json!({"key": "ANTHROPIC_API_KEY", "value": "v"})).await;
    assert_eq!(status, 201);
    let (status, body) = server.post(&token, &path, json!({"key": "ZEROCLAW_CONFIG_DIR", "value": "v"})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn rotation_keeps_secret_values() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy_testkit(&server, &token).await;
    let value = unique_value();
    let (status, _) = server.post(&token, &format!("/api/agents/{id}/secrets"), json!({"key": "OPENAI_API_KEY", "value": value})).await;
    assert_eq!(status, 201);
    let key_file = server.data_dir.path().join("age.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();

    // Rotate while the server runs.
    let output = server.cli(&["secrets", "rotate-key"], None);
    assert!(output.status.success(), "rotate-key failed: {}", String::from_utf8_lossy(&output.stderr));
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(old_key, new_key, "the identity did not change");
    assert!(!server.data_dir.path().join("age.key.next").exists());

    let (_, agent) = server.post_empty(&token, &format!("/api/agents/{id}/restart?wait=true")).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    let pid = pid_of(&server, &token, &id).await;
    assert!(environ(pid).contains(&format!("OPENAI_API_KEY={value}")));

    // A secret written after the rotation by the running server is readable
    // after a server restart, which loads only the new key.
    let (status, _) = server.post(&token, &format!("/api/agents/{id}/secrets"), json!({"key": "LATER", "value": "later"})).await;
    assert_eq!(status, 201);
    let mut server = server;
    server.kill();
    server.launch().await;
    let (_, agent) = server.post_empty(&token, &format!("/api/agents/{id}/restart?wait=true")).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    let pid = pid_of(&server, &token, &id).await;
    assert!(environ(pid).contains(&"LATER=later".to_string()));
}

#[tokio::test]
async fn unreadable_identity_stops_the_server_before_it_listens() {
    let mut server = Server::start().await;
    server.kill();
    std::fs::write(server.data_dir.path().join("age.key"), "garbage\n").unwrap();
    let output = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(server.data_dir.path().join("agentstead.toml"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("age.key"), "{stderr}");
    assert!(stderr.contains("AGE-SECRET-KEY-1"), "{stderr}");
}

#[tokio::test]
async fn generated_credentials_match_the_agents_environment() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let deploy = server.create_token("ops@example.com", "read,deploy");
    let other = server.user_with_token("other@example.com");
    let id = deploy_testkit(&server, &token).await;
    let path = format!("/api/agents/{id}/credentials");

    let (status, body) = server.get(&token, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["values"][0]["name"], "TESTKIT_TOKEN", "{body}");
    let value = body["values"][0]["value"].as_str().unwrap();
    assert_eq!(value.len(), 64, "{body}");
    let pid = pid_of(&server, &token, &id).await;
    assert!(environ(pid).contains(&format!("TESTKIT_TOKEN={value}")), "the agent runs with another value");
    assert!(!server.log().contains(value), "the server log contains a generated credential");

    let (status, _) = server.get(&deploy, &path).await;
    assert_eq!(status, 403);
    let (status, _) = server.get(&other, &path).await;
    assert_eq!(status, 404);
}
