//! Every operation of the OpenAPI document against every kind of caller:
//! no credentials, a malformed, expired or revoked token, another account's
//! token, a token of each scope, the session cookie, and the cookie sent by
//! another site. Each cell asserts the exact status and that no response to
//! someone other than the owner carries the owner's data.
//!
//! The table must name every operation of the document: a new operation
//! without a row fails the test.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{PASSWORD, Server, split};
use serde_json::{Value, json};

const OWNER: &str = "owner@matrix.test";
const STRANGER: &str = "stranger@matrix.test";

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    /// Anyone; credentials are ignored.
    Public,
    /// Anyone holding the signed link in the path; credentials are ignored.
    SignedLink,
    /// A token with this scope (`full` implies every scope) or a session.
    Scope(&'static str),
    /// Any valid token or a session.
    AnyCredential,
    /// Only a session; tokens get 403.
    SessionOnly,
}

/// What an allowed call uses up, so that each allowed caller gets its own.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Uses {
    Nothing,
    Agent,
    Secret,
    Backup,
    Schedule,
    Token,
    Session,
}

struct Row {
    operation_id: &'static str,
    access: Access,
    /// Status of an allowed call.
    success: u16,
    uses: Uses,
}

const fn row(operation_id: &'static str, access: Access, success: u16, uses: Uses) -> Row {
    Row { operation_id, access, success, uses }
}

use Access::{AnyCredential, Public, Scope, SessionOnly, SignedLink};

const ROWS: &[Row] = &[
    row("listAgents", Scope("read"), 200, Uses::Nothing),
    row("getAgent", Scope("read"), 200, Uses::Nothing),
    row("deployAgent", Scope("deploy"), 201, Uses::Nothing),
    row("startAgent", Scope("deploy"), 200, Uses::Nothing),
    row("stopAgent", Scope("deploy"), 200, Uses::Nothing),
    row("restartAgent", Scope("deploy"), 200, Uses::Nothing),
    row("redeployAgent", Scope("deploy"), 200, Uses::Nothing),
    row("deleteAgent", Scope("deploy"), 204, Uses::Agent),
    row("getAgentLogs", Scope("read"), 200, Uses::Nothing),
    row("getAgentHealth", Scope("read"), 200, Uses::Nothing),
    row("getAgentMetrics", Scope("read"), 200, Uses::Nothing),
    row("listAgentEvents", Scope("read"), 200, Uses::Nothing),
    row("listSecrets", Scope("full"), 200, Uses::Nothing),
    row("setSecret", Scope("full"), 201, Uses::Nothing),
    row("getAgentCredentials", Scope("full"), 200, Uses::Nothing),
    row("deleteSecret", Scope("full"), 204, Uses::Secret),
    row("listBackups", Scope("read"), 200, Uses::Nothing),
    row("createBackup", Scope("deploy"), 201, Uses::Nothing),
    row("downloadBackup", Scope("full"), 200, Uses::Nothing),
    row("pinBackup", Scope("deploy"), 200, Uses::Nothing),
    row("deleteBackup", Scope("deploy"), 204, Uses::Backup),
    row("restoreBackup", Scope("deploy"), 200, Uses::Nothing),
    row("fetchBackupArchive", SignedLink, 200, Uses::Nothing),
    row("listSchedules", Scope("read"), 200, Uses::Nothing),
    row("createSchedule", Scope("deploy"), 201, Uses::Nothing),
    row("updateSchedule", Scope("deploy"), 200, Uses::Nothing),
    row("deleteSchedule", Scope("deploy"), 204, Uses::Schedule),
    row("runSchedule", Scope("deploy"), 200, Uses::Nothing),
    row("listTokens", AnyCredential, 200, Uses::Nothing),
    row("createToken", SessionOnly, 201, Uses::Nothing),
    row("revokeToken", SessionOnly, 204, Uses::Token),
    row("login", Public, 200, Uses::Nothing),
    row("logout", SessionOnly, 204, Uses::Session),
    row("getHealthz", Public, 200, Uses::Nothing),
];

/// The callers of the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    NoCredentials,
    MalformedToken,
    ExpiredToken,
    RevokedToken,
    OtherAccountToken,
    ScopeToken(&'static str),
    SessionCookie,
    CrossSiteCookie,
}

const CASES: &[Case] = &[
    Case::NoCredentials,
    Case::MalformedToken,
    Case::ExpiredToken,
    Case::RevokedToken,
    Case::OtherAccountToken,
    Case::ScopeToken("read"),
    Case::ScopeToken("deploy"),
    Case::ScopeToken("full"),
    Case::SessionCookie,
    Case::CrossSiteCookie,
];

/// Status and error code a case expects; `None` as code for a success.
fn expected(row: &Row, case: Case, path_names_owner_resource: bool) -> (u16, Option<&'static str>) {
    let ok = (row.success, None);
    match row.access {
        Public | SignedLink => return ok,
        _ => {}
    }
    match case {
        Case::NoCredentials => (401, Some("unauthorized")),
        Case::MalformedToken | Case::ExpiredToken | Case::RevokedToken => (401, Some("invalid_token")),
        Case::CrossSiteCookie => (403, Some("cross_site_request")),
        Case::SessionCookie => ok,
        Case::OtherAccountToken | Case::ScopeToken(_) => {
            let granted = match case {
                Case::ScopeToken(scope) => scope,
                _ => "full",
            };
            match row.access {
                SessionOnly => return (403, Some("session_required")),
                Scope(required) if granted != "full" && granted != required => return (403, Some("insufficient_scope")),
                _ => {}
            }
            if case == Case::OtherAccountToken && path_names_owner_resource {
                (404, Some("not_found"))
            } else {
                ok
            }
        }
    }
}

struct Credentials {
    malformed: String,
    expired: String,
    revoked: String,
    stranger: String,
    read: String,
    deploy: String,
    full: String,
    session: String,
}

/// The owner's resources an operation's path refers to.
#[derive(Clone)]
struct Targets {
    agent: String,
    secret: String,
    backup: String,
    schedule: String,
    token: String,
    link: String,
}

struct Fixture {
    server: Server,
    credentials: Credentials,
    targets: Targets,
    /// Every identifier of the owner's data, for the leak check.
    owner_data: Vec<String>,
    counter: u32,
}

async fn login(server: &Server, email: &str) -> String {
    let response =
        server.http.post(format!("{}/api/auth/login", server.url)).json(&json!({"email": email, "password": PASSWORD})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string()
}

async fn with_session(server: &Server, cookie: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    split(server.http.request(method, format!("{}{path}", server.url)).header("cookie", cookie).json(&body).send().await.unwrap()).await
}

impl Fixture {
    async fn new() -> Fixture {
        let server = Server::start().await;
        server.create_user(OWNER);
        server.create_user(STRANGER);
        let session = login(&server, OWNER).await;
        let full = server.create_token(OWNER, "full");

        let expires_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let output = server.cli(&["token", "create", "--email", OWNER, "--name", "soon", "--scopes", "full", "--expires-at", &expires_at], None);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let expired = String::from_utf8(output.stdout).unwrap().trim().to_string();

        let (status, revoked) = with_session(&server, &session, reqwest::Method::POST, "/api/user/tokens", json!({"name": "gone", "scopes": ["full"]})).await;
        assert_eq!(status, 201, "{revoked}");
        let (status, body) =
            with_session(&server, &session, reqwest::Method::DELETE, &format!("/api/user/tokens/{}", revoked["id"].as_str().unwrap()), json!({})).await;
        assert_eq!(status, 204, "{body}");

        let credentials = Credentials {
            malformed: "ast_not-a-token".to_string(),
            expired,
            revoked: revoked["token"].as_str().unwrap().to_string(),
            stranger: server.create_token(STRANGER, "full"),
            read: server.create_token(OWNER, "read"),
            deploy: server.create_token(OWNER, "deploy"),
            full,
            session,
        };
        let placeholder = Targets {
            agent: String::new(),
            secret: String::new(),
            backup: String::new(),
            schedule: String::new(),
            token: String::new(),
            link: String::new(),
        };
        let mut fixture = Fixture { server, credentials, targets: placeholder, owner_data: vec![OWNER.to_string()], counter: 0 };
        let agent = fixture.make(Uses::Agent, "").await;
        let link_backup = fixture.make(Uses::Backup, &agent).await;
        let (status, link) = fixture.server.get(&fixture.credentials.full, &format!("/api/agents/{agent}/workspace/backups/{link_backup}/download")).await;
        assert_eq!(status, 200, "{link}");
        fixture.targets = Targets {
            secret: fixture.make(Uses::Secret, &agent).await,
            backup: fixture.make(Uses::Backup, &agent).await,
            schedule: fixture.make(Uses::Schedule, &agent).await,
            token: fixture.make(Uses::Token, &agent).await,
            link: link["url"].as_str().unwrap().rsplit('/').next().unwrap().to_string(),
            agent,
        };
        // The expired token must have expired by the time the matrix runs.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        fixture
    }

    /// Creates a resource of the owner's and returns its id (or the cookie).
    async fn make(&mut self, kind: Uses, agent: &str) -> String {
        self.counter += 1;
        let n = self.counter;
        let full = &self.credentials.full;
        let (status, body) = match kind {
            Uses::Nothing => unreachable!(),
            Uses::Agent => {
                let agent = self.server.deploy(full, "testkit", Some(&format!("matrix-{n}"))).await;
                self.owner_data.push(format!("matrix-{n}"));
                (201, json!({"id": agent["id"]}))
            }
            Uses::Secret => {
                let key = format!("MATRIX_SECRET_{n}");
                let (status, body) = self.server.post(full, &format!("/api/agents/{agent}/secrets"), json!({"key": key, "value": "hunter2"})).await;
                assert_eq!(status, 201, "{body}");
                (201, json!({"id": key}))
            }
            Uses::Backup => self.server.post_empty(full, &format!("/api/agents/{agent}/workspace/backup")).await,
            Uses::Schedule => {
                let name = format!("matrix schedule {n}");
                self.owner_data.push(name.clone());
                self.server
                    .post(full, &format!("/api/agents/{agent}/schedules"), json!({"name": name, "cron": "0 2 * * *", "action": "backup", "enabled": true}))
                    .await
            }
            Uses::Token => {
                let (status, body) = with_session(
                    &self.server,
                    &self.credentials.session,
                    reqwest::Method::POST,
                    "/api/user/tokens",
                    json!({"name": format!("matrix token {n}"), "scopes": ["read"]}),
                )
                .await;
                (status, json!({"id": body["id"]}))
            }
            Uses::Session => return login(&self.server, OWNER).await,
        };
        assert_eq!(status, 201, "creating a {kind:?} failed: {body}");
        let id = body["id"].as_str().unwrap().to_string();
        self.owner_data.push(id.clone());
        id
    }

    /// Returns a valid request body for the operation, so that only the credentials decide the status.
    fn body(&mut self, operation_id: &str) -> Option<Value> {
        self.counter += 1;
        let n = self.counter;
        Some(match operation_id {
            "deployAgent" => json!({"agentType": "testkit", "region": "eu"}),
            "setSecret" => json!({"key": format!("MATRIX_SET_{n}"), "value": "hunter2"}),
            "pinBackup" => json!({"pinned": true}),
            "createSchedule" => json!({"name": format!("matrix created {n}"), "cron": "30 3 * * *", "action": "backup", "enabled": false}),
            "updateSchedule" => json!({"enabled": false}),
            "createToken" => json!({"name": format!("matrix created {n}"), "scopes": ["read"]}),
            "login" => json!({"email": OWNER, "password": PASSWORD}),
            _ => return None,
        })
    }
}

fn fill(template: &str, targets: &Targets) -> String {
    let token_path = template.starts_with("/api/user/tokens/");
    template
        .replace("{id}", if token_path { &targets.token } else { &targets.agent })
        .replace("{key}", &targets.secret)
        .replace("{backupId}", &targets.backup)
        .replace("{scheduleId}", &targets.schedule)
        .replace("{token}", &targets.link)
}

#[tokio::test]
async fn every_operation_checks_every_caller() {
    let mut fixture = Fixture::new().await;
    let (status, spec) = split(fixture.server.http.get(format!("{}/openapi.json", fixture.server.url)).send().await.unwrap()).await;
    assert_eq!(status, 200);

    let mut operations = Vec::new();
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId")).to_string();
            operations.push((id, method.to_uppercase(), path.clone()));
        }
    }
    let in_spec: BTreeSet<&str> = operations.iter().map(|(id, _, _)| id.as_str()).collect();
    let in_table: BTreeSet<&str> = ROWS.iter().map(|row| row.operation_id).collect();
    let missing: Vec<_> = in_spec.difference(&in_table).collect();
    let stale: Vec<_> = in_table.difference(&in_spec).collect();
    assert!(missing.is_empty(), "operations without rows: {missing:?}");
    assert!(stale.is_empty(), "rows without operations: {stale:?}");

    let mut faults = Vec::new();
    let mut cells = 0;
    for (operation_id, method, template) in &operations {
        let row = ROWS.iter().find(|row| row.operation_id == operation_id).unwrap();
        for &case in CASES {
            let path_names_owner_resource = template.contains('{');
            let (status, code) = expected(row, case, path_names_owner_resource);
            let mut targets = fixture.targets.clone();
            let mut session = fixture.credentials.session.clone();
            if code.is_none() {
                match row.uses {
                    Uses::Nothing => {}
                    Uses::Agent => targets.agent = fixture.make(Uses::Agent, "").await,
                    Uses::Secret => targets.secret = fixture.make(Uses::Secret, &targets.agent).await,
                    Uses::Backup => targets.backup = fixture.make(Uses::Backup, &targets.agent).await,
                    Uses::Schedule => targets.schedule = fixture.make(Uses::Schedule, &targets.agent).await,
                    Uses::Token => targets.token = fixture.make(Uses::Token, "").await,
                    Uses::Session => session = fixture.make(Uses::Session, "").await,
                }
            }
            let mut path = fill(template, &targets);
            if ["startAgent", "stopAgent", "restartAgent", "redeployAgent"].contains(&operation_id.as_str()) {
                path.push_str("?wait=true");
            }
            let body = fixture.body(operation_id);
            let server = &fixture.server;
            let mut request = server.http.request(method.parse().unwrap(), format!("{}{path}", server.url));
            let credentials = &fixture.credentials;
            request = match case {
                Case::NoCredentials => request,
                Case::MalformedToken => request.bearer_auth(&credentials.malformed),
                Case::ExpiredToken => request.bearer_auth(&credentials.expired),
                Case::RevokedToken => request.bearer_auth(&credentials.revoked),
                Case::OtherAccountToken => request.bearer_auth(&credentials.stranger),
                Case::ScopeToken("read") => request.bearer_auth(&credentials.read),
                Case::ScopeToken("deploy") => request.bearer_auth(&credentials.deploy),
                Case::ScopeToken(_) => request.bearer_auth(&credentials.full),
                Case::SessionCookie => request.header("cookie", &session),
                Case::CrossSiteCookie => request
                    .header("cookie", &session)
                    .header("origin", "https://elsewhere.example")
                    .header("sec-fetch-site", "cross-site"),
            };
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let got = response.status().as_u16();
            let text = response.text().await.unwrap();
            cells += 1;
            let cell = format!("{method} {template} as {case:?}");
            if got != status {
                faults.push(format!("{cell}: got {got}, expected {status}: {text}"));
                continue;
            }
            if let Some(code) = code {
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let shape_ok = body["code"] == code
                    && body["message"].as_str().is_some_and(|message| !message.is_empty())
                    && body.as_object().is_some_and(|object| object.len() == 2);
                if !shape_ok {
                    faults.push(format!("{cell}: expected the error shape with code {code}, got {text}"));
                }
            }
            let foreign = !matches!(case, Case::ScopeToken(_) | Case::SessionCookie) && !matches!(row.access, Public | SignedLink);
            if foreign {
                for datum in fixture.owner_data.iter().filter(|datum| !path.contains(datum.as_str())) {
                    if text.contains(datum.as_str()) {
                        faults.push(format!("{cell}: the response names the owner's `{datum}`: {text}"));
                    }
                }
            }
        }
    }
    assert!(faults.is_empty(), "{} of {cells} cells failed:\n{}", faults.len(), faults.join("\n"));
    assert!(cells >= ROWS.len() * CASES.len());
}
