//! The HTTP API against a real server: contract, auth, validation, errors.
//! These tests need no agent program beyond `python3`.

mod common;

use common::{PASSWORD, Server, split};
use serde_json::{Value, json};

/// Every operation of the public API reference, with its scope.
const REFERENCE: &[(&str, &str, &str)] = &[
    ("get", "/api/agents", "read"),
    ("get", "/api/agents/{id}", "read"),
    ("post", "/api/agents/deploy", "deploy"),
    ("post", "/api/agents/{id}/start", "deploy"),
    ("post", "/api/agents/{id}/stop", "deploy"),
    ("post", "/api/agents/{id}/restart", "deploy"),
    ("post", "/api/agents/{id}/redeploy", "deploy"),
    ("get", "/api/agents/{id}/logs", "read"),
    ("get", "/api/agents/{id}/health", "read"),
    ("get", "/api/agents/{id}/metrics", "read"),
    ("get", "/api/user/tokens", "any valid token"),
    ("post", "/api/user/tokens", "session auth only"),
    ("delete", "/api/user/tokens/{id}", "session auth only"),
];

async fn login(server: &Server, email: &str) -> String {
    let response = server
        .http
        .post(format!("{}/api/auth/login", server.url))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_string()
}

async fn with_cookie(server: &Server, method: reqwest::Method, path: &str, cookie: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = server.http.request(method, format!("{}{path}", server.url)).header("cookie", cookie);
    if let Some(body) = body {
        request = request.json(&body);
    }
    split(request.send().await.unwrap()).await
}

fn assert_error_shape(body: &Value, code: &str) {
    assert_eq!(body["code"], code, "unexpected error body: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "error body has extra fields: {body}");
}

#[tokio::test]
async fn openapi_covers_every_reference_operation() {
    let server = Server::start().await;
    let (status, spec) = split(server.http.get(format!("{}/openapi.json", server.url)).send().await.unwrap()).await;
    assert_eq!(status, 200);

    for (method, path, scope) in REFERENCE {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is missing from /openapi.json");
        assert!(operation["operationId"].is_string(), "{method} {path} has no operationId");
        let description = operation["description"].as_str().unwrap_or_default();
        assert!(description.contains(scope), "{method} {path} does not state scope `{scope}`: {description}");
        assert!(operation["security"].is_array(), "{method} {path} declares no security");
    }
    assert!(spec["paths"]["/api/agents/deploy"]["post"]["responses"]["201"].is_object(), "deploy must answer 201");
    assert!(spec["paths"]["/api/user/tokens"]["post"]["responses"]["201"].is_object(), "token creation must answer 201");

    let agent = &spec["components"]["schemas"]["Agent"]["properties"];
    for field in ["id", "name", "status", "agentType", "region", "publicUrl", "createdAt"] {
        assert!(agent[field].is_object(), "Agent lacks `{field}`");
    }
    let token = &spec["components"]["schemas"]["Token"]["properties"];
    for field in ["id", "name", "prefix", "scopes", "lastUsedAt", "expiresAt", "createdAt"] {
        assert!(token[field].is_object(), "Token lacks `{field}`");
    }
    // The reference shows `"expiresAt": null`, so nullable fields must be declared nullable.
    assert_eq!(token["expiresAt"]["nullable"], true, "{}", token["expiresAt"]);
    assert_eq!(agent["statusMessage"]["nullable"], true, "{}", agent["statusMessage"]);
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["TokenAuth"]["scheme"], "bearer");
    assert_eq!(schemes["SessionAuth"]["in"], "cookie");

    let yaml = server.http.get(format!("{}/openapi.yaml", server.url)).send().await.unwrap();
    assert_eq!(yaml.status(), 200);
    assert!(yaml.text().await.unwrap().contains("/api/agents/deploy"));
    let docs = server.http.get(format!("{}/docs", server.url)).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"), "/docs is not Swagger UI");
}

#[tokio::test]
async fn healthz_needs_no_credentials() {
    let server = Server::start().await;
    let (status, body) = split(server.http.get(format!("{}/healthz", server.url)).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn missing_and_invalid_credentials_get_401() {
    let server = Server::start().await;
    let (status, body) = split(server.http.get(format!("{}/api/agents", server.url)).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_error_shape(&body, "unauthorized");

    let (status, body) = server.get("ast_notarealtokennotarealtokennotarealtoken12", "/api/agents").await;
    assert_eq!(status, 401);
    assert_error_shape(&body, "invalid_token");
    let (status, body) = server.get("garbage", "/api/agents").await;
    assert_eq!(status, 401);
    assert_error_shape(&body, "invalid_token");
}

#[tokio::test]
async fn scopes_are_enforced() {
    let server = Server::start().await;
    server.create_user("ops@example.com");
    let read = server.create_token("ops@example.com", "read");
    let deploy = server.create_token("ops@example.com", "deploy");

    let (status, body) = server.post(&read, "/api/agents/deploy", json!({"agentType": "testkit", "region": "eu"})).await;
    assert_eq!(status, 403, "{body}");
    assert_error_shape(&body, "insufficient_scope");
    assert!(body["message"].as_str().unwrap().contains("deploy"), "{body}");

    let (status, body) = server.get(&deploy, "/api/agents").await;
    assert_eq!(status, 403, "deploy does not imply read: {body}");
    let (status, _) = server.get(&read, "/api/agents").await;
    assert_eq!(status, 200);
    let (status, _) = server.get(&read, "/api/user/tokens").await;
    assert_eq!(status, 200, "any valid token lists tokens");
}

#[tokio::test]
async fn unknown_agent_type_and_region_name_accepted_values() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");

    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "openclow", "region": "eu"})).await;
    assert_eq!(status, 400);
    assert_error_shape(&body, "invalid_agent_type");
    let message = body["message"].as_str().unwrap();
    for accepted in ["openclaw", "openfang", "nullclaw", "zeroclaw", "openclow"] {
        assert!(message.contains(accepted), "`{accepted}` missing from: {message}");
    }

    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "openclaw", "region": "mars"})).await;
    assert_eq!(status, 400);
    assert_error_shape(&body, "invalid_region");
    let message = body["message"].as_str().unwrap();
    for region in ["eu", "us", "mars"] {
        assert!(message.contains(region), "`{region}` missing from: {message}");
    }

    let (status, body) = server.get(&token, "/api/agents").await;
    assert_eq!(status, 200);
    assert_eq!(body["agents"], json!([]), "a rejected deploy must not leave an agent");
}

#[tokio::test]
async fn malformed_bodies_get_400_in_the_error_shape() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");

    // Each case names the field at fault in the message.
    let cases = [
        (json!({"agentType": "openclaw"}), "field `region` is required"),
        (json!({"agentType": "openclaw", "region": "eu", "colour": "blue"}), "unknown field `colour`"),
        (json!({"agentType": 7, "region": "eu"}), "field `agentType` must be of type string"),
        (json!({"agentType": "openclaw", "region": "eu", "name": ""}), "field `name` must not be empty"),
        (json!({"agentType": "openclaw", "region": "eu", "name": " padded"}), "field `name` must be a label without control characters"),
        (json!({"agentType": "openclaw", "region": ["eu"]}), "field `region` must be of type string"),
        (json!(["openclaw", "eu"]), "the body must be of type object"),
    ];
    for (body, named) in cases {
        let (status, answer) = server.post(&token, "/api/agents/deploy", body.clone()).await;
        assert_eq!(status, 400, "{body} was answered with {status}: {answer}");
        assert_error_shape(&answer, "invalid_request");
        assert!(answer["message"].as_str().unwrap().contains(named), "{body}: {answer}");
    }
    let response = server
        .http
        .post(format!("{}/api/agents/deploy", server.url))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(r#"{"agentType": "openclaw", "region": "eu"}"#)
        .send()
        .await
        .unwrap();
    let (status, answer) = split(response).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("Content-Type: application/json"), "{answer}");
    for query in ["tail=0", "tail=-1", "tail=abc", "tail=99999"] {
        let (status, answer) = server.get(&token, &format!("/api/agents/oc-a1b2c3/logs?{query}")).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_error_shape(&answer, "invalid_request");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains("parameter `tail` is invalid: it must be an integer from 1 to 10000"), "{query}: {message}");
    }
    let (status, answer) = server.post(&token, "/api/agents/oc-a1b2c3/start?wait=maybe", json!(null)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("`wait` is invalid: it must be `true` or `false`"), "{answer}");
    let (status, answer) = server.post(&token, "/api/user/tokens", json!({"name": "ci", "scopes": ["admin"]})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("field `scopes.0` must be one of"), "{answer}");
    // A rejected secret value is never repeated back.
    let (status, answer) = server.post(&token, "/api/agents/oc-a1b2c3/secrets", json!({"key": "K", "value": "hunter2\u{0}"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("field `value`"), "{answer}");
    assert!(!answer.to_string().contains("hunter2"), "{answer}");

    let response = server
        .http
        .post(format!("{}/api/agents/deploy", server.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = split(response).await;
    assert_eq!(status, 400, "{body}");
    assert_error_shape(&body, "invalid_request");
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let name = "x".repeat(2 * 1024 * 1024);
    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "openclaw", "region": "eu", "name": name})).await;
    assert_eq!(status, 413, "{body}");
    assert_error_shape(&body, "payload_too_large");
}

#[tokio::test]
async fn body_limit_applies_to_chunked_bodies() {
    let options = common::Options { extra_config: String::new(), ..common::Options::default() };
    let mut server = Server::start_with(options).await;
    server.kill();
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    std::fs::write(server.config_path(), format!("max_body_kib = 4\n{config}")).unwrap();
    server.launch().await;
    let token = server.user_with_token("ops@example.com");

    // 5 KiB with Content-Length, then the same body chunked without one.
    let body = json!({"agentType": "testkit", "region": "eu", "name": "x".repeat(5 * 1024)}).to_string();
    let request = server.http.post(format!("{}/api/agents/deploy", server.url)).bearer_auth(&token).header("content-type", "application/json");
    let (status, answer) = split(request.body(body.clone()).send().await.unwrap()).await;
    assert_eq!(status, 413, "{answer}");
    assert_error_shape(&answer, "payload_too_large");
    assert!(answer["message"].as_str().unwrap().contains("4 KiB"), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("max_body_kib"), "{answer}");

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /api/agents/deploy HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(512) {
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload_too_large"), "{reply}");
    assert!(reply.contains("max_body_kib"), "{reply}");
    // Neither oversized request created an agent, and a small body works.
    let (status, agents) = server.get(&token, "/api/agents").await;
    assert_eq!(status, 200);
    assert_eq!(agents["agents"], json!([]));
    let (status, answer) = server.post(&token, "/api/agents/deploy", json!({"agentType": "testkit", "region": "eu"})).await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test]
async fn undocumented_methods_get_405_with_allow() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let cases = [
        ("TRACE", "/api/agents", "GET, HEAD"),
        ("OPTIONS", "/api/agents/deploy", "POST"),
        ("PUT", "/api/agents/oc-a1b2c3", "DELETE, GET, HEAD"),
        ("PATCH", "/api/user/tokens", "GET, HEAD, POST"),
        ("PUT", "/openapi.json", "GET, HEAD"),
        ("DELETE", "/docs", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let request = server.http.request(method.parse().unwrap(), format!("{}{path}", server.url)).bearer_auth(&token);
        let response = request.send().await.unwrap();
        let header = response.headers().get("allow").map(|value| value.to_str().unwrap().to_string());
        let (status, body) = split(response).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_error_shape(&body, "method_not_allowed");
        assert_eq!(header.as_deref(), Some(allow), "{method} {path}");
    }
}

#[tokio::test]
async fn secret_bodies_follow_the_document() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let agent = server.deploy(&token, "testkit", None).await;
    let path = format!("/api/agents/{}/secrets", agent["id"].as_str().unwrap());
    // The maximum key and value lengths the document allows are stored,
    // counted in characters, not bytes.
    let key = format!("K{}", "_".repeat(255));
    let (status, body) = server.post(&token, &path, json!({"key": key, "value": "é".repeat(65_536)})).await;
    assert_eq!(status, 201, "{body}");
    for (body, field) in [
        (json!({"key": "", "value": "v"}), "field `key`"),
        (json!({"key": "1ABC", "value": "v"}), "field `key`"),
        (json!({"key": format!("K{}", "_".repeat(256)), "value": "v"}), "field `key`"),
        (json!({"key": "K", "value": "x".repeat(65_537)}), "field `value`"),
    ] {
        let (status, answer) = server.post(&token, &path, body).await;
        assert_eq!(status, 400, "{answer}");
        assert_error_shape(&answer, "invalid_request");
        assert!(answer["message"].as_str().unwrap().contains(field), "{answer}");
    }
}

#[tokio::test]
async fn unknown_route_and_malformed_ids_get_404() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let (status, body) = server.get(&token, "/api/nothing-here").await;
    assert_eq!(status, 404);
    assert_error_shape(&body, "not_found");
    for id in ["oc-zzzzzz", "not-an-id", "OC-A1B2C3", "oc-a1b2c3d4"] {
        let (status, body) = server.get(&token, &format!("/api/agents/{id}")).await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_error_shape(&body, "not_found");
    }
}

/// SQL statements the server logged since `from` bytes into its log.
fn statements_since(server: &Server, from: usize) -> Vec<String> {
    server.log()[from..].lines().filter(|line| line.contains("sqlx::query")).map(str::to_string).collect()
}

#[tokio::test]
async fn malformed_ids_skip_resource_queries() {
    let options = common::Options { log_filter: "info,agentstead=debug,sqlx::query=debug".into(), ..common::Options::default() };
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let agent = server.deploy(&token, "testkit", None).await;
    let id = agent["id"].as_str().unwrap();
    let bad = ["oc-zzzzzzz", "OC-A1B2C3", "not%20an%20id", "bkp_short", "sch_UPPERCASE0", "tok_x", "..", "lower-case!"];

    let mut requests = Vec::new();
    for value in bad {
        for path in ["", "/logs", "/health", "/metrics", "/events", "/secrets", "/workspace/backups", "/schedules"] {
            requests.push((reqwest::Method::GET, format!("/api/agents/{value}{path}")));
        }
        requests.push((reqwest::Method::POST, format!("/api/agents/{value}/restart")));
        requests.push((reqwest::Method::GET, format!("/api/agents/{id}/workspace/backups/{value}/download")));
        requests.push((reqwest::Method::DELETE, format!("/api/agents/{id}/workspace/backups/{value}")));
        requests.push((reqwest::Method::DELETE, format!("/api/agents/{id}/schedules/{value}")));
        requests.push((reqwest::Method::POST, format!("/api/agents/{id}/schedules/{value}/run")));
        // A secret key has the shape of an environment variable name.
        if value.contains(['-', '%', '.', '!']) {
            requests.push((reqwest::Method::DELETE, format!("/api/agents/{id}/secrets/{value}")));
        }
    }
    for (method, path) in requests {
        let before = server.log().len();
        let response = server.http.request(method.clone(), format!("{}{path}", server.url)).bearer_auth(&token).send().await.unwrap();
        let (status, body) = split(response).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_error_shape(&body, "not_found");
        // The token lookup is the only statement; the resource is never queried.
        let statements = statements_since(&server, before);
        assert!(
            statements.iter().all(|line| line.contains("FROM tokens")),
            "{method} {path} queried more than the token:\n{}",
            statements.join("\n")
        );
    }

    // The check would notice a query: a well-formed id is looked up.
    let before = server.log().len();
    let (status, _) = server.get(&token, "/api/agents/oc-a1b2c3").await;
    assert_eq!(status, 404);
    assert!(statements_since(&server, before).iter().any(|line| line.contains("FROM agents")), "{}", server.log());
}

#[tokio::test]
async fn another_accounts_agent_is_not_found() {
    let server = Server::start().await;
    let alice = server.user_with_token("alice@example.com");
    let bob = server.user_with_token("bob@example.com");
    let agent = server.deploy(&alice, "testkit", None).await;
    let id = agent["id"].as_str().unwrap();

    for path in ["", "/logs", "/health", "/metrics", "/events"] {
        let (status, body) = server.get(&bob, &format!("/api/agents/{id}{path}")).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert!(!body.to_string().contains("testkit"), "404 leaks the agent: {body}");
    }
    for action in ["start", "stop", "restart", "redeploy"] {
        let (status, _) = server.post_empty(&bob, &format!("/api/agents/{id}/{action}")).await;
        assert_eq!(status, 404, "POST {action}");
    }
    let (status, _) = server.delete(&bob, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 404);
    let (_, list) = server.get(&bob, "/api/agents").await;
    assert_eq!(list["agents"], json!([]));

    let (status, _) = server.get(&alice, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 200, "the owner still sees the agent");
}

#[tokio::test]
async fn token_lifecycle_through_a_session() {
    let server = Server::start().await;
    server.create_user("ops@example.com");
    let bearer = server.create_token("ops@example.com", "full");
    let cookie = login(&server, "ops@example.com").await;

    let (status, body) = server.post(&bearer, "/api/user/tokens", json!({"name": "ci", "scopes": ["read"]})).await;
    assert_eq!(status, 403, "a token cannot create tokens: {body}");
    assert_error_shape(&body, "session_required");

    let request = json!({"name": "deploy-ci", "scopes": ["read", "deploy"], "expiresAt": "2099-01-01T00:00:00.000Z"});
    let (status, created) = with_cookie(&server, reqwest::Method::POST, "/api/user/tokens", &cookie, Some(request)).await;
    assert_eq!(status, 201, "{created}");
    let value = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("tok_"), "{id}");

    let (status, _) = server.get(&value, "/api/agents").await;
    assert_eq!(status, 200, "the new token authenticates");
    let (status, list) = with_cookie(&server, reqwest::Method::GET, "/api/user/tokens", &cookie, None).await;
    assert_eq!(status, 200);
    assert!(!list.to_string().contains(&value), "a listing must never contain a token value");
    let listed = list["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap().clone();
    assert_eq!(listed["prefix"], &value[..8]);
    assert_eq!(listed["scopes"], json!(["read", "deploy"]));
    assert_eq!(listed["expiresAt"], "2099-01-01T00:00:00.000Z");
    assert!(listed["lastUsedAt"].is_string(), "lastUsedAt after a use: {listed}");

    let (status, body) = server.delete(&bearer, &format!("/api/user/tokens/{id}")).await;
    assert_eq!(status, 403, "a token cannot revoke tokens: {body}");
    let (status, _) = with_cookie(&server, reqwest::Method::DELETE, &format!("/api/user/tokens/{id}"), &cookie, None).await;
    assert_eq!(status, 204);
    let (status, body) = server.get(&value, "/api/agents").await;
    assert_eq!(status, 401, "a revoked token is rejected: {body}");
    let (status, _) = with_cookie(&server, reqwest::Method::DELETE, &format!("/api/user/tokens/{id}"), &cookie, None).await;
    assert_eq!(status, 404, "revoking twice");
}

#[tokio::test]
async fn token_creation_is_validated() {
    let server = Server::start().await;
    server.create_user("ops@example.com");
    let cookie = login(&server, "ops@example.com").await;
    let cases = [
        (json!({"name": "old", "scopes": ["read"], "expiresAt": "2001-01-01T00:00:00Z"}), "invalid_expires_at"),
        (json!({"name": "none", "scopes": []}), "invalid_request"),
        (json!({"name": "bad", "scopes": ["admin"]}), "invalid_request"),
        (json!({"name": "", "scopes": ["read"]}), "invalid_request"),
        (json!({"name": "x", "scopes": ["read"], "expiresAt": "soon"}), "invalid_request"),
    ];
    for (body, code) in cases {
        let (status, answer) = with_cookie(&server, reqwest::Method::POST, "/api/user/tokens", &cookie, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
    }
}

#[tokio::test]
async fn other_accounts_token_cannot_be_revoked() {
    let server = Server::start().await;
    server.create_user("alice@example.com");
    server.create_user("bob@example.com");
    let alice_cookie = login(&server, "alice@example.com").await;
    let bob_cookie = login(&server, "bob@example.com").await;
    let (_, created) =
        with_cookie(&server, reqwest::Method::POST, "/api/user/tokens", &alice_cookie, Some(json!({"name": "a", "scopes": ["read"]}))).await;
    let id = created["id"].as_str().unwrap();
    let (status, _) = with_cookie(&server, reqwest::Method::DELETE, &format!("/api/user/tokens/{id}"), &bob_cookie, None).await;
    assert_eq!(status, 404);
    let (_, bob_list) = with_cookie(&server, reqwest::Method::GET, "/api/user/tokens", &bob_cookie, None).await;
    assert_eq!(bob_list["tokens"], json!([]));
}

#[tokio::test]
async fn cross_site_cookie_write_is_rejected() {
    let server = Server::start().await;
    server.create_user("ops@example.com");
    let cookie = login(&server, "ops@example.com").await;
    let response = server
        .http
        .post(format!("{}/api/user/tokens", server.url))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .json(&json!({"name": "stolen", "scopes": ["full"]}))
        .send()
        .await
        .unwrap();
    let (status, body) = split(response).await;
    assert_eq!(status, 403, "{body}");
    assert_error_shape(&body, "cross_site_request");

    let response = server
        .http
        .post(format!("{}/api/user/tokens", server.url))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"name": "stolen", "scopes": ["full"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn wrong_password_gets_401_and_logout_ends_session() {
    let server = Server::start().await;
    server.create_user("ops@example.com");
    let response = server
        .http
        .post(format!("{}/api/auth/login", server.url))
        .json(&json!({"email": "ops@example.com", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    let (status, body) = split(response).await;
    assert_eq!(status, 401);
    assert_error_shape(&body, "invalid_credentials");

    let cookie = login(&server, "OPS@example.com").await;
    let (status, _) = with_cookie(&server, reqwest::Method::POST, "/api/auth/logout", &cookie, None).await;
    assert_eq!(status, 204);
    let (status, _) = with_cookie(&server, reqwest::Method::GET, "/api/agents", &cookie, None).await;
    assert_eq!(status, 401, "the session ended");
}

#[tokio::test]
async fn cli_rejects_bad_token_requests() {
    let server = Server::start().await;
    server.create_user("ops@example.com");
    let cases: &[&[&str]] = &[
        &["token", "create", "--email", "ops@example.com", "--name", "x", "--scopes", "admin"],
        &["token", "create", "--email", "nobody@example.com", "--name", "x", "--scopes", "read"],
        &["token", "create", "--email", "ops@example.com", "--name", "x", "--scopes", "read", "--expires-at", "2001-01-01T00:00:00Z"],
    ];
    for args in cases {
        let output = server.cli(args, None);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(output.stdout.is_empty(), "{args:?} printed a token");
        assert!(String::from_utf8_lossy(&output.stderr).contains("error:"), "{args:?}");
    }
}
