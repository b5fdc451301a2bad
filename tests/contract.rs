//! Compares the generated OpenAPI document with the public API reference,
//! and drives the API with third-party tools: schemathesis, a client that
//! openapi-python-client generates, and Swagger UI in headless Chromium.

mod common;
#[path = "contract/reference.rs"]
mod reference;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;

use agentstead::api::{json_media, json_schema as to_json_schema};
use common::{Server, split};
use serde_json::{Value, json};

async fn fetch_spec(server: &Server) -> Value {
    let (status, spec) = split(server.http.get(format!("{}/openapi.json", server.url)).send().await.unwrap()).await;
    assert_eq!(status, 200, "{spec}");
    spec
}

/// Follows a `$ref` into `components`, or returns `schema` itself.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().or_else(|| schema["allOf"][0]["$ref"].as_str()) {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap();
            let target = &spec["components"]["schemas"][name];
            assert!(target.is_object(), "dangling reference {reference}");
            resolve(spec, target)
        }
        None => schema,
    }
}

/// Validates `instance` against `schema`, a schema of the document `spec`.
fn validate(spec: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
    let root = json!({
        "allOf": [to_json_schema(schema)],
        "components": {"schemas": to_json_schema(&spec["components"]["schemas"])},
    });
    let validator = jsonschema::draft7::new(&root).map_err(|error| format!("the schema does not compile: {error}"))?;
    let errors: Vec<String> = validator.iter_errors(instance).map(|error| format!("{} at {}", error, error.instance_path())).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

fn description_marks_extension(schema: &Value) -> bool {
    schema["description"].as_str().is_some_and(|text| text.contains("**Extension.**"))
}

/// Checks that every key of `example` is a property of `schema` with the
/// same name, and that every property the example lacks is an extension.
fn compare_fields(spec: &Value, schema: &Value, example: &Value, at: &str, faults: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    match example {
        Value::Object(fields) => {
            let properties = schema["properties"].as_object().cloned().unwrap_or_default();
            for (name, value) in fields {
                match properties.get(name) {
                    Some(property) => compare_fields(spec, property, value, &format!("{at}.{name}"), faults),
                    None => faults.push(format!("{at}: the reference's field `{name}` is not in the schema")),
                }
            }
            for (name, property) in &properties {
                if !fields.contains_key(name) && !description_marks_extension(property) {
                    faults.push(format!("{at}.{name} is not in the reference and is not marked **Extension.**"));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                compare_fields(spec, &schema["items"], item, &format!("{at}[]"), faults);
            }
        }
        _ => {}
    }
}

/// Returns the status and JSON body schema of `operation`'s success response.
fn success_schema<'a>(operation: &'a Value) -> Option<(&'a str, &'a Value)> {
    let responses = operation["responses"].as_object()?;
    responses
        .iter()
        .find(|(code, _)| code.starts_with('2'))
        .map(|(code, response)| (code.as_str(), &json_media(&response["content"])["schema"]))
}

/// Returns the scope phrase of a reference line, without its parenthesis:
/// `session auth only (cannot create tokens with a token)` → `session auth only`.
fn scope_phrase(text: &str) -> &str {
    text.split(['(', '.']).next().unwrap().trim()
}

#[tokio::test]
async fn openapi_document_matches_the_reference() {
    let server = Server::start().await;
    let spec = fetch_spec(&server).await;
    let operations = reference::operations();
    assert_eq!(operations.len(), 25, "the reference parser lost operations: {operations:#?}");

    let mut faults = Vec::new();
    let mut in_reference = BTreeSet::new();
    for op in &operations {
        let name = format!("{} {}", op.method.to_uppercase(), op.path);
        in_reference.insert((op.method.clone(), op.path.clone()));
        let operation = &spec["paths"][&op.path][&op.method];
        if !operation.is_object() {
            faults.push(format!("{name} is missing from the document"));
            continue;
        }
        if operation["summary"].as_str() != Some(op.title.as_str()) {
            faults.push(format!("{name}: summary {} differs from the reference's title {:?}", operation["summary"], op.title));
        }
        let description = operation["description"].as_str().unwrap_or("");
        let scope = description.strip_prefix("Scope required: ").map(scope_phrase);
        if scope != Some(scope_phrase(&op.scope)) {
            faults.push(format!("{name}: the description states scope {scope:?}, the reference {:?}", op.scope));
        }
        let success = success_schema(operation);
        if let Some(status) = op.status {
            match success {
                Some((code, _)) if code == status.to_string() => {}
                other => faults.push(format!("{name}: success status {:?}, the reference says {status}", other.map(|(code, _)| code))),
            }
        }
        if let Some(example) = &op.request_example {
            let schema = &json_media(&operation["requestBody"]["content"])["schema"];
            if let Err(error) = validate(&spec, schema, example) {
                faults.push(format!("{name}: the reference's request body {example} does not validate: {error}"));
            }
            compare_fields(&spec, schema, example, &format!("{name} request"), &mut faults);
            for row in &op.fields {
                let property = resolve(&spec, &resolve(&spec, schema)["properties"][&row.name]);
                if property["type"].as_str() != Some(row.json_type.as_str()) {
                    faults.push(format!("{name}: field {} has type {}, the reference {}", row.name, property["type"], row.json_type));
                }
                let values: Vec<&str> =
                    row.rest.split([',', ' ']).map(str::trim).filter(|word| !word.is_empty() && *word != "or").collect();
                let documented = |value: &str| {
                    property["enum"].as_array().is_some_and(|values| values.iter().any(|v| v == value))
                        || property["description"].as_str().is_some_and(|text| text.contains(&format!("`{value}`")))
                };
                // A values column lists every accepted value; a description
                // column names them only for enumerations.
                let is_values_list = values.len() > 1 && values.iter().all(|value| value.chars().all(|c| c.is_ascii_lowercase()));
                if is_values_list {
                    for value in values.iter().filter(|value| !documented(value)) {
                        faults.push(format!("{name}: field {} does not document the reference's value `{value}`", row.name));
                    }
                }
            }
        }
        if let Some(example) = &op.response_example {
            match success {
                Some((_, schema)) if schema.is_object() => {
                    if let Err(error) = validate(&spec, schema, example) {
                        faults.push(format!("{name}: the reference's response {example} does not validate: {error}"));
                    }
                    compare_fields(&spec, schema, example, &format!("{name} response"), &mut faults);
                }
                _ => faults.push(format!("{name}: no JSON success response to hold the reference's example")),
            }
        }
    }

    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            if in_reference.contains(&(method.clone(), path.clone())) {
                continue;
            }
            let name = format!("{} {path}", method.to_uppercase());
            let summary = operation["summary"].as_str().unwrap_or("");
            if !summary.ends_with("(extension)") || !description_marks_extension(operation) {
                faults.push(format!("{name} is not in the reference, so its summary must end in `(extension)` and its description say **Extension.**"));
            }
        }
    }
    assert!(faults.is_empty(), "{} differences from the reference:\n{}", faults.len(), faults.join("\n"));
}

/// Returns a program the contract tests need, or `None` after printing a
/// skip message when it is missing. With `AGENTSTEAD_REQUIRE_CONTRACT_TOOLS=1`,
/// as CI sets it, a missing program fails the test instead.
fn contract_tool(path: Option<std::path::PathBuf>, description: &str) -> Option<std::path::PathBuf> {
    if let Some(path) = path.filter(|path| path.exists()) {
        return Some(path);
    }
    let message = format!("{description} is not installed; the README's \"The API contract\" section shows how to install it");
    assert!(std::env::var("AGENTSTEAD_REQUIRE_CONTRACT_TOOLS").as_deref() != Ok("1"), "{message}");
    eprintln!("SKIPPED: {message}");
    None
}

/// Returns a program of the Python virtual environment in `AGENTSTEAD_CONTRACT_VENV`.
fn venv_program(name: &str) -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("AGENTSTEAD_CONTRACT_VENV").map(std::path::PathBuf::from);
    contract_tool(venv.map(|venv| venv.join("bin").join(name)), &format!("{name} (in AGENTSTEAD_CONTRACT_VENV)"))
}

/// Directory for files a test keeps for people to look at, such as screenshots.
fn artifact_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("AGENTSTEAD_ARTIFACT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A W3C WebDriver session in headless Chromium, through chromedriver.
struct Browser {
    driver: std::process::Child,
    base: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromedriver: &std::path::Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser { driver, base: format!("http://127.0.0.1:{port}"), http, _profile: profile };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while browser.http.get(format!("{}/status", browser.base)).send().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let chromium = std::env::var("AGENTSTEAD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1400",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        }}});
        let session = browser.command(reqwest::Method::POST, "/session", capabilities).await;
        browser.base = format!("{}/session/{}", browser.base, session["sessionId"].as_str().expect("a WebDriver session id"));
        browser
    }

    async fn try_command(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if method != reqwest::Method::GET {
            request = request.json(body);
        }
        let (status, reply) = split(request.send().await.unwrap()).await;
        (status, reply["value"].clone())
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (status, value) = self.try_command(method.clone(), path, &body).await;
        assert_eq!(status, 200, "WebDriver {method} {path} failed: {value}");
        value
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    /// Waits up to 15 s for an element matching `xpath` and returns its id.
    async fn find(&self, xpath: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let found = self.command(reqwest::Method::POST, "/elements", json!({"using": "xpath", "value": xpath})).await;
            if let Some(element) = found.as_array().and_then(|elements| elements.first()) {
                return element.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
            }
            assert!(std::time::Instant::now() < deadline, "no element matches {xpath}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element, retrying for up to 10 s while an animation or
    /// an overlay still covers it.
    async fn click(&self, xpath: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let element = self.find(xpath).await;
            let (status, value) = self.try_command(reqwest::Method::POST, &format!("/element/{element}/click"), &json!({})).await;
            if status == 200 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "clicking {xpath} failed: {value}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn type_into(&self, xpath: &str, text: &str) {
        let element = self.find(xpath).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), json!({"text": text})).await;
    }

    async fn text(&self, xpath: &str) -> String {
        let element = self.find(xpath).await;
        self.command(reqwest::Method::GET, &format!("/element/{element}/text"), Value::Null).await.as_str().unwrap_or("").to_string()
    }

    async fn screenshot(&self, file: &std::path::Path) {
        use base64::Engine;
        let png = self.command(reqwest::Method::GET, "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads a process group of its own, with Chromium in it.
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn swagger_ui_authorizes_and_lists_agents_in_chromium() {
    let chromedriver = std::env::var_os("AGENTSTEAD_CHROMEDRIVER").map(std::path::PathBuf::from).unwrap_or_else(|| "/usr/bin/chromedriver".into());
    let Some(chromedriver) = contract_tool(Some(chromedriver), "chromedriver (Debian's chromium-driver)") else { return };
    let server = Server::start().await;
    let token = server.user_with_token("browser@contract.test");
    let agent = server.deploy(&token, "testkit", Some("seen-in-browser")).await;
    let agent_id = agent["id"].as_str().unwrap();

    let browser = Browser::start(&chromedriver).await;
    browser.open(&format!("{}/docs", server.url)).await;
    browser.click("//button[contains(@class, 'authorize')]").await;
    let token_form = "//div[contains(@class, 'auth-container')][.//code[text()='TokenAuth']]";
    browser.type_into(&format!("{token_form}//input"), &token).await;
    browser.click(&format!("{token_form}//button[contains(@class, 'authorize')]")).await;
    browser.click("//button[contains(@class, 'btn-done')]").await;

    let operation = "//div[@id='operations-Agents-listAgents']";
    browser.click(&format!("{operation}//button[contains(@class, 'opblock-summary-control')]")).await;
    browser.click(&format!("{operation}//button[contains(@class, 'try-out__btn')]")).await;
    browser.click(&format!("{operation}//button[contains(@class, 'execute')]")).await;
    let live = format!("{operation}//table[contains(@class, 'live-responses-table')]");
    let status = browser.text(&format!("{live}//tbody//td[contains(@class, 'response-col_status')]")).await;
    let body = browser.text(&format!("{live}//*[contains(@class, 'response-col_description')]//pre")).await;
    let screenshot = artifact_dir().join("swagger-ui-list-agents.png");
    browser.screenshot(&screenshot).await;
    eprintln!("screenshot: {}", screenshot.display());

    assert_eq!(status.trim(), "200", "Swagger UI shows status {status:?}; body {body}");
    let listed: Value = serde_json::from_str(&body).unwrap_or_else(|error| panic!("the rendered body is not JSON ({error}): {body}"));
    assert_eq!(listed["agents"][0]["id"], agent_id, "{body}");
    assert_eq!(listed["agents"][0]["name"], "seen-in-browser", "{body}");
    let curl = browser.text(&format!("{operation}//div[contains(@class, 'curl-command')]")).await;
    assert!(curl.contains("Authorization: Bearer ast_"), "the request did not carry the token: {curl}");
}

#[tokio::test]
async fn schemathesis_finds_no_faults() {
    let Some(st) = venv_program("st") else { return };
    // Every deploy that schemathesis makes reserves an agent port.
    let server = Server::start_with(common::Options { ports: 400, ..common::Options::default() }).await;
    let token = server.user_with_token("fuzz@contract.test");
    let work = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/contract/schemathesis.toml");
    let report = artifact_dir().join("schemathesis.junit.xml");
    let output = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("{}/openapi.json", server.url))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&report)
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "schemathesis found faults ({}):\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn generated_python_client_deploys_and_lists_tokens() {
    let (Some(generator), Some(python)) = (venv_program("openapi-python-client"), venv_program("python")) else { return };
    let server = Server::start().await;
    let token = server.user_with_token("client@contract.test");
    let work = tempfile::tempdir().unwrap();
    let spec = fetch_spec(&server).await;
    let spec_file = work.path().join("openapi.json");
    std::fs::write(&spec_file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let contract = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/contract");
    // With `--meta none` the output directory is the package itself.
    let generated = work.path().join("agentstead_client");
    // The generator formats its output with ruff from the same environment.
    let path = format!("{}:{}", generator.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new(&generator)
        .env("PATH", path)
        .args(["generate", "--meta", "none", "--path"])
        .arg(&spec_file)
        .arg("--output-path")
        .arg(&generated)
        .arg("--config")
        .arg(format!("{contract}/python-client.yaml"))
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "openapi-python-client failed:\n{log}");
    // The one warning allowed: the generator has no type for a gzip
    // download, so that operation returns the raw response.
    let warnings: Vec<&str> = log.lines().filter(|line| line.starts_with("WARNING")).collect();
    assert!(
        warnings.iter().all(|line| line.contains("GET /api/backup-downloads/{token}")),
        "openapi-python-client warned about the document:\n{log}"
    );

    let output = tokio::process::Command::new(&python)
        .arg(format!("{contract}/client_walkthrough.py"))
        .args([&server.url, &token])
        .env("PYTHONPATH", work.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the generated client failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| panic!("no summary line: {stdout}"));
    let agent_id = summary["agent"].as_str().unwrap();
    let (status, agent) = server.get(&token, &format!("/api/agents/{agent_id}")).await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    assert_eq!(summary["healthy"], true, "{summary}");
    assert_eq!(summary["tokens"], 1, "{summary}");
}
