//! The `runtime-docker` plugin against a real Docker Engine.
//!
//! The engine comes from `AGENTSTEAD_DOCKER_HOST` or `tests/docker/engine.sh`.
//! Images are built locally `FROM scratch` with a static busybox, because no
//! public registry is reachable; a local `docker-registry` on 127.0.0.1
//! replaces one. Without an engine the tests are skipped with a
//! message, unless `AGENTSTEAD_REQUIRE_DOCKER=1`, as in CI, makes that a
//! failure.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::docker::{Engine, Registry};
use common::{Options, Server};
use serde_json::{Value, json};

/// The testkit image every test uses; see the testkit plugin's container plan.
const TESTKIT_IMAGE: &str = "agentstead/testkit:latest";

/// Builds the testkit image once per test binary.
fn engine_with_testkit_image() -> Option<Engine> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let engine = Engine::find()?;
    let mut built = BUILT.lock().unwrap_or_else(|poison| poison.into_inner());
    if !*built {
        engine.build_testkit_image(TESTKIT_IMAGE, "v1");
        *built = true;
    }
    Some(engine)
}

/// Server settings that run region `eu` on the Docker runtime.
fn docker_options(engine: &Engine, network: &str, pull: &str, more: &str) -> Options {
    let extra_config = format!(
        "[regions.eu]\nruntime = \"runtime-docker\"\n\n[runtime.docker]\nendpoint = \"{}\"\nnetwork = \"{network}\"\npull = \"{pull}\"\n\n{more}",
        engine.endpoint
    );
    Options { call_timeout_ms: 10_000, extra_config, ..Options::default() }
}

/// Removes the containers of the agents it saw, also when a test fails.
struct Cleanup<'a> {
    engine: &'a Engine,
    agents: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.engine.remove_agents(&self.agents);
    }
}

async fn deploy(server: &Server, token: &str, name: &str) -> Value {
    let (status, agent) = server.post(token, "/api/agents/deploy?wait=true", json!({"agentType": "testkit", "region": "eu", "name": name})).await;
    assert_eq!(status, 201, "{agent}");
    agent
}

async fn lifecycle(server: &Server, token: &str, id: &str, action: &str) -> Value {
    let (status, agent) = server.post_empty(token, &format!("/api/agents/{id}/{action}?wait=true")).await;
    assert_eq!(status, 200, "{action}: {agent}");
    agent
}

async fn fetch(server: &Server, url: &str) -> (u16, String) {
    let response = server.http.get(url).send().await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

fn environ(pid: u64) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0).map(|entry| String::from_utf8_lossy(entry).into_owned()).collect()
}

#[tokio::test]
async fn bridge_container_runs_the_whole_lifecycle() {
    let Some(engine) = engine_with_testkit_image() else { return };
    let mut server = Server::start_with(docker_options(&engine, "bridge", "missing", "")).await;
    let token = server.user_with_token("ops@example.com");
    let agent = deploy(&server, &token, "web").await;
    let id = agent["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup { engine: &engine, agents: vec![id.clone()] };
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());

    // One container, labelled with the agent, running as the image's user,
    // with the agent's port published on loopback.
    let containers = engine.containers_of(&id);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let inspect = engine.inspect(&containers[0]);
    let port = agent["publicUrl"].as_str().unwrap().rsplit(':').next().unwrap().to_string();
    assert_eq!(inspect["Config"]["User"], "65534:65534");
    assert_eq!(inspect["HostConfig"]["NetworkMode"], "bridge");
    let binding = &inspect["HostConfig"]["PortBindings"][format!("{port}/tcp")][0];
    assert_eq!(binding["HostIp"], "127.0.0.1", "{inspect}");
    assert_eq!(binding["HostPort"], port.as_str(), "{inspect}");

    // The agent wrote into its workspace, which the host gave to uid 65534.
    let workspace = server.data_dir.path().join("agents").join(&id).join("workspace");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&workspace).unwrap());
    assert_eq!(owner, 65534);
    assert!(workspace.join("www/healthz").is_file());

    // Reached through the published port, as a user would.
    let (status, body) = fetch(&server, &format!("{}/version", agent["publicUrl"].as_str().unwrap())).await;
    assert_eq!((status, body.trim()), (200, "v1"));
    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["runtime"]["state"], "running", "{health}");

    // Logs and metrics come from the engine.
    let (_, logs) = server.get(&token, &format!("/api/agents/{id}/logs")).await;
    assert!(logs["lines"].to_string().contains(&format!("testkit container {id} starting")), "{logs}");
    let (_, metrics) = server.get(&token, &format!("/api/agents/{id}/metrics")).await;
    assert!(metrics["memoryBytes"].as_u64().unwrap() > 0, "{metrics}");
    assert!(metrics["processes"].as_u64().unwrap() >= 1, "{metrics}");

    // A secret reaches the container's environment at the next restart.
    let (status, _) = server.post(&token, &format!("/api/agents/{id}/secrets"), json!({"key": "MODEL_API_KEY", "value": "sk-container-1"})).await;
    assert_eq!(status, 201);
    let agent = lifecycle(&server, &token, &id, "restart").await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    let pid = health["runtime"]["pid"].as_u64().expect("a running container reports its pid");
    assert!(environ(pid).contains(&"MODEL_API_KEY=sk-container-1".to_string()));
    assert_eq!(engine.containers_of(&id).len(), 1, "a restart leaves one container");

    // Stop, then start.
    let agent = lifecycle(&server, &token, &id, "stop").await;
    assert_eq!(agent["status"], "OFFLINE", "{agent}");
    let state = engine.inspect(&engine.containers_of(&id)[0])["State"]["Running"].clone();
    assert_eq!(state, false);
    let agent = lifecycle(&server, &token, &id, "start").await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");

    // A host killed and started again adopts the running container.
    server.kill();
    server.launch().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent = server.wait_for_status(&token, &id, "ONLINE", Duration::from_secs(10)).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());
    assert_eq!(engine.containers_of(&id).len(), 1, "exactly one container after a host restart");

    // Delete removes the container.
    let (status, _) = server.delete(&token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 204);
    assert!(engine.containers_of(&id).is_empty());
}

#[tokio::test]
async fn host_network_container_listens_on_the_port() {
    let Some(engine) = engine_with_testkit_image() else { return };
    let server = Server::start_with(docker_options(&engine, "host", "missing", "")).await;
    let token = server.user_with_token("ops@example.com");
    let agent = deploy(&server, &token, "hostnet").await;
    let id = agent["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup { engine: &engine, agents: vec![id.clone()] };
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());

    let inspect = engine.inspect(&engine.containers_of(&id)[0]);
    assert_eq!(inspect["HostConfig"]["NetworkMode"], "host");
    let (status, _) = fetch(&server, &format!("{}/healthz", agent["publicUrl"].as_str().unwrap())).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn redeploy_pulls_the_newer_image() {
    let Some(engine) = engine_with_testkit_image() else { return };
    let registry = Registry::start();
    let remote = format!("{}/testkit:latest", registry.address);
    let push = |version: &str| {
        let local = format!("agentstead/testkit:{version}");
        engine.build_testkit_image(&local, version);
        engine.docker(&["tag", &local, &remote]);
        engine.docker(&["push", &remote]);
        // Only the registry has it now, so a deploy must pull.
        engine.docker(&["rmi", &remote]);
    };
    push("v1");

    let more = format!("[agent_types.testkit]\nimage = \"{remote}\"\n");
    let server = Server::start_with(docker_options(&engine, "bridge", "always", &more)).await;
    let token = server.user_with_token("ops@example.com");
    let agent = deploy(&server, &token, "pulled").await;
    let id = agent["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup { engine: &engine, agents: vec![id.clone()] };
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());
    let url = format!("{}/version", agent["publicUrl"].as_str().unwrap());
    assert_eq!(fetch(&server, &url).await.1.trim(), "v1");

    push("v2");
    let agent = lifecycle(&server, &token, &id, "redeploy").await;
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());
    assert_eq!(fetch(&server, &url).await.1.trim(), "v2");
    assert_eq!(engine.containers_of(&id).len(), 1, "a redeploy leaves one container");
    // The workspace outlives the container.
    let workspace = server.data_dir.path().join("agents").join(&id).join("workspace");
    assert!(workspace.join("testkit.txt").is_file());
}

/// Deploys and returns the settled agent's status message.
async fn failed_deploy(server: &Server, token: &str, name: &str) -> String {
    let agent = deploy(server, token, name).await;
    assert_eq!(agent["status"], "ERROR", "{agent}");
    agent["statusMessage"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn engine_errors_name_the_fix() {
    let Some(engine) = engine_with_testkit_image() else { return };

    // No engine at the endpoint.
    let mut options = docker_options(&engine, "bridge", "missing", "");
    options.extra_config = options.extra_config.replace(&engine.endpoint, "unix:///nonexistent/docker.sock");
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let message = failed_deploy(&server, &token, "nowhere").await;
    assert!(message.contains("cannot reach the Docker Engine"), "{message}");
    assert!(message.contains("runtime.docker.endpoint"), "{message}");
    drop(server);

    // An image the engine lacks, with pulls turned off.
    let more = "[agent_types.testkit]\nimage = \"agentstead/absent:1\"\n";
    let server = Server::start_with(docker_options(&engine, "bridge", "never", more)).await;
    let token = server.user_with_token("ops@example.com");
    let message = failed_deploy(&server, &token, "absent").await;
    assert!(message.contains("image `agentstead/absent:1` is not on the Docker Engine"), "{message}");
    assert!(message.contains("runtime.docker.pull"), "{message}");
    drop(server);

    // A pull from a registry that does not exist.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let more = format!("[agent_types.testkit]\nimage = \"127.0.0.1:{closed}/absent:1\"\n");
    let server = Server::start_with(docker_options(&engine, "bridge", "always", &more)).await;
    let token = server.user_with_token("ops@example.com");
    let message = failed_deploy(&server, &token, "unpullable").await;
    assert!(message.contains(&format!("pulling image `127.0.0.1:{closed}/absent:1` failed")), "{message}");
    assert!(message.contains("connection refused"), "the engine's own reason: {message}");
    drop(server);

    let server = Server::start_with(docker_options(&engine, "bridge", "missing", "")).await;
    let token = server.user_with_token("ops@example.com");
    let mut cleanup = Cleanup { engine: &engine, agents: Vec::new() };

    // A container that exits reports its exit code.
    let agent = deploy(&server, &token, "crash").await;
    let id = agent["id"].as_str().unwrap().to_string();
    cleanup.agents.push(id.clone());
    assert_eq!(agent["status"], "ERROR", "{agent}");
    assert!(agent["statusMessage"].as_str().unwrap().contains("exited with code 3"), "{agent}");
    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    assert_eq!(health["runtime"]["exitCode"], 3, "{health}");
    assert_eq!(health["runtime"]["oomKilled"], false, "{health}");

    // A host port taken by another program while the agent was stopped.
    let agent = deploy(&server, &token, "porty").await;
    let id = agent["id"].as_str().unwrap().to_string();
    cleanup.agents.push(id.clone());
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    lifecycle(&server, &token, &id, "stop").await;
    let port: u16 = agent["publicUrl"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let agent = lifecycle(&server, &token, &id, "start").await;
    assert_eq!(agent["status"], "ERROR", "{agent}");
    let message = agent["statusMessage"].as_str().unwrap();
    assert!(message.contains(&format!("host port {port} is already in use")), "{message}");
}

/// Returns the OpenClaw image built by `tests/docker/openclaw-image.sh`, if
/// the engine has it.
fn openclaw_image(engine: &Engine) -> Option<String> {
    let image = std::env::var("AGENTSTEAD_OPENCLAW_IMAGE").unwrap_or_else(|_| "agentstead/openclaw:2026.9.6".into());
    let present = engine.docker_command(&["image", "inspect", &image]).output().is_ok_and(|output| output.status.success());
    if present {
        return Some(image);
    }
    if std::env::var("AGENTSTEAD_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("AGENTSTEAD_REQUIRE_DOCKER=1 but the engine has no image {image}; build it with tests/docker/openclaw-image.sh");
    }
    eprintln!("\n*** SKIPPED OpenClaw container test: the engine has no image {image}. ***\n*** Build it with tests/docker/openclaw-image.sh (see README). ***\n");
    None
}

#[tokio::test]
async fn openclaw_container_deploys_to_online() {
    let Some(engine) = Engine::find() else { return };
    let Some(image) = openclaw_image(&engine) else { return };
    let more = format!("[agent_types.openclaw]\nimage = \"{image}\"\n");
    let server = Server::start_with(docker_options(&engine, "bridge", "missing", &more)).await;
    let token = server.user_with_token("ops@example.com");

    let started = std::time::Instant::now();
    let (status, agent) = server.post(&token, "/api/agents/deploy?wait=true", json!({"agentType": "openclaw", "region": "eu"})).await;
    assert_eq!(status, 201, "{agent}");
    let id = agent["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup { engine: &engine, agents: vec![id.clone()] };
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());
    eprintln!("openclaw container ONLINE after {:.1} s", started.elapsed().as_secs_f64());

    // The gateway responds on the published port.
    let public_url = agent["publicUrl"].as_str().unwrap();
    let (status, body) = fetch(&server, &format!("{public_url}/healthz")).await;
    assert_eq!(status, 200);
    assert!(body.contains("live"), "{body}");

    let (_, logs) = server.get(&token, &format!("/api/agents/{id}/logs?tail=500")).await;
    assert!(logs.to_string().contains("[gateway]"), "the gateway's own output: {logs}");
    let (_, metrics) = server.get(&token, &format!("/api/agents/{id}/metrics")).await;
    assert!(metrics["memoryBytes"].as_u64().unwrap() > 50_000_000, "{metrics}");

    // A secret reaches the gateway's environment at the next restart.
    let (status, _) = server.post(&token, &format!("/api/agents/{id}/secrets"), json!({"key": "ANTHROPIC_API_KEY", "value": "sk-ant-container"})).await;
    assert_eq!(status, 201);
    let agent = lifecycle(&server, &token, &id, "restart").await;
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());
    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    let pid = health["runtime"]["pid"].as_u64().expect("a running container reports its pid");
    assert!(environ(pid).contains(&"ANTHROPIC_API_KEY=sk-ant-container".to_string()));

    let agent = lifecycle(&server, &token, &id, "stop").await;
    assert_eq!(agent["status"], "OFFLINE", "{agent}");
    let (status, _) = server.delete(&token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 204);
    assert!(engine.containers_of(&id).is_empty());
}
