//! The plugin sandbox and the built-in agent-type plugins.

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentstead::config::ProcessRuntimeConfig;
use agentstead::plugins::bindings::Target;
use agentstead::plugins::{DeployContext, HostOptions, LaunchPlan, Limits, PluginHost, Policy, ProcessSupervisor};
use common::{Options, Server, TESTKIT_WASM};
use serde_json::json;

async fn host() -> PluginHost {
    let limits = Limits { memory_limit_mib: 64, call_timeout: Duration::from_secs(5) };
    let supervisor = Arc::new(ProcessSupervisor::new(&ProcessRuntimeConfig::default()));
    PluginHost::new(HostOptions::confined(limits), supervisor).await.unwrap()
}

fn context(agent_id: &str, target: Target, secrets: &[&str]) -> DeployContext {
    DeployContext {
        agent_id: agent_id.into(),
        name: agent_id.into(),
        region: "eu".into(),
        target,
        port: 20123,
        workspace: "/data/agents/x/workspace".into(),
        secret_names: secrets.iter().map(|s| s.to_string()).collect(),
    }
}

async fn plan(host: &PluginHost, agent_type: &str, target: Target, secrets: &[&str]) -> LaunchPlan {
    let plugin = host.agent_type(agent_type).unwrap_or_else(|| panic!("no plugin for {agent_type}"));
    host.plan(&plugin, &context("xx-abcdef", target, secrets)).await.unwrap()
}

fn env<'a>(plan: &'a LaunchPlan, name: &str) -> Option<&'a str> {
    plan.env.iter().find(|var| var.name == name).map(|var| var.value.as_str())
}

#[tokio::test]
async fn built_in_agent_types_and_prefixes() {
    let host = host().await;
    assert_eq!(host.agent_types(), ["nullclaw", "openclaw", "openfang", "zeroclaw"]);
    let prefixes: Vec<(String, String)> = ["openclaw", "openfang", "nullclaw", "zeroclaw"]
        .iter()
        .map(|t| {
            let info = host.agent_type(t).unwrap().agent.clone().unwrap();
            (info.agent_type, info.id_prefix)
        })
        .collect();
    assert_eq!(prefixes, [("openclaw", "oc"), ("openfang", "of"), ("nullclaw", "nc"), ("zeroclaw", "zc")].map(|(a, b)| (a.to_string(), b.to_string())));
    for plugin in host.list() {
        assert_eq!(plugin.info.abi, "0.1.0", "{}", plugin.info.name);
    }
}

/// Facts every agent-type plugin must encode, checked for each built-in.
#[tokio::test]
async fn launch_plans_carry_each_agents_facts() {
    let host = host().await;
    let cases = [
        ("openclaw", "openclaw", "/healthz", "OPENCLAW_STATE_DIR", Some(1000)),
        ("openfang", "openfang", "/api/health", "OPENFANG_HOME", Some(0)),
        ("nullclaw", "nullclaw", "/health", "NULLCLAW_HOME", Some(65534)),
        ("zeroclaw", "zeroclaw", "/health", "ZEROCLAW_CONFIG_DIR", Some(65534)),
    ];
    for (agent_type, program, health, state_var, uid) in cases {
        let process = plan(&host, agent_type, Target::Process, &[]).await;
        assert_eq!(process.command[0], program, "{agent_type}");
        assert_eq!(process.health.path, health, "{agent_type}");
        assert_eq!(process.run_as_uid, uid, "{agent_type}");
        let state_dir = env(&process, state_var).unwrap_or_else(|| panic!("{agent_type} lacks {state_var}"));
        assert!(state_dir.starts_with("/data/agents/x/workspace"), "{agent_type}: {state_dir}");
        let mentions_port = process.command.iter().any(|arg| arg == "20123")
            || process.files.iter().any(|file| file.contents.contains("20123"));
        assert!(mentions_port, "{agent_type} does not use the allocated port");
        assert!(process.stop_grace_ms > 0, "{agent_type}");
    }
}

#[tokio::test]
async fn drivers_bind_beyond_loopback_only_in_containers() {
    let host = host().await;
    let process = plan(&host, "openclaw", Target::Process, &[]).await;
    let container = plan(&host, "openclaw", Target::Container, &[]).await;
    assert!(process.command.windows(2).any(|w| w == ["--bind", "loopback"]), "{:?}", process.command);
    assert!(container.container_args.windows(2).any(|w| w == ["--bind", "lan"]), "{:?}", container.container_args);
    assert!(container.generated_env.contains(&"OPENCLAW_GATEWAY_TOKEN".to_string()), "a lan bind needs a token");

    let zeroclaw = plan(&host, "zeroclaw", Target::Container, &[]).await;
    assert!(zeroclaw.container_args.windows(2).any(|w| w == ["--host", "0.0.0.0"]), "{:?}", zeroclaw.container_args);
    assert!(zeroclaw.files.iter().any(|f| f.contents.contains("allow_public_bind = true")));
}

#[tokio::test]
async fn zeroclaw_maps_secret_names() {
    let host = host().await;
    let plan = plan(&host, "zeroclaw", Target::Process, &["ANTHROPIC_API_KEY", "CUSTOM_TOKEN"]).await;
    let mapped: Vec<(&str, &str)> = plan.secret_env.iter().map(|m| (m.secret.as_str(), m.env.as_str())).collect();
    assert_eq!(mapped, [("ANTHROPIC_API_KEY", "ZEROCLAW_providers__models__anthropic__api_key")]);
    assert!(plan.env.iter().all(|var| !var.name.starts_with("ZEROCLAW_") || var.name.ends_with("_DIR")));

    let plugin = host.agent_type("zeroclaw").unwrap();
    let error = host.plan(&plugin, &context("zc-abcdef", Target::Process, &["ZEROCLAW_SECRET"])).await.unwrap_err();
    assert!(error.to_string().contains("ZEROCLAW_SECRET"), "{error}");
}

#[tokio::test]
async fn trapping_plugin_becomes_an_error_naming_it() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "testkit", "region": "eu", "name": "trap"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "plugin_trapped");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("agent-testkit"), "{message}");
    assert!(message.contains("testkit was asked to trap"), "the plugin's panic message is quoted: {message}");
    assert!(!message.contains("wasm backtrace"), "the backtrace stays in the server log: {message}");
    assert!(!message.contains("RUST_BACKTRACE"), "{message}");

    // The host keeps serving, and the same plugin works for the next call.
    let agent = server.deploy(&token, "testkit", None).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
}

#[tokio::test]
async fn looping_plugin_is_interrupted_at_its_deadline() {
    let server = Server::start_with(Options { call_timeout_ms: 1_000, ..Options::default() }).await;
    let token = server.user_with_token("ops@example.com");
    let started = std::time::Instant::now();
    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "testkit", "region": "eu", "name": "loop"})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "plugin_timeout");
    assert!(body["message"].as_str().unwrap().contains("agent-testkit"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "the loop was not interrupted in time");

    let (status, _) = server.get(&token, "/api/agents").await;
    assert_eq!(status, 200, "the host keeps serving");
    let (_, list) = server.get(&token, "/api/agents").await;
    assert_eq!(list["agents"], json!([]), "a failed plan leaves no agent");
}

#[tokio::test]
async fn memory_hungry_plugin_hits_its_cap() {
    let server = Server::start_with(Options { memory_limit_mib: 32, ..Options::default() }).await;
    let token = server.user_with_token("ops@example.com");
    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "testkit", "region": "eu", "name": "oom"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "plugin_out_of_memory");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("agent-testkit"), "{message}");
    assert!(message.contains("32 MiB"), "{message}");

    let (status, health) = common::split(server.http.get(format!("{}/healthz", server.url)).send().await.unwrap()).await;
    assert_eq!(status, 200, "{health}");
}

#[tokio::test]
async fn plugin_policy_sets_its_own_memory_cap() {
    let extra_config = "[plugins.policy.agent-testkit]\nmemory_limit_mib = 16\n".to_string();
    let server = Server::start_with(Options { memory_limit_mib: 64, extra_config, ..Options::default() }).await;
    let token = server.user_with_token("ops@example.com");
    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "testkit", "region": "eu", "name": "oom"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "plugin_out_of_memory");
    assert!(body["message"].as_str().unwrap().contains("16 MiB"), "{body}");
}

/// Serves one canned HTTP response per connection on loopback and counts
/// the connections it accepted.
fn counting_http_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (address, accepted)
}

/// Calls `create` of the egress probe, which requests `http://AUTHORITY/`.
async fn probe_egress(host: &PluginHost, authority: &str) -> String {
    use agentstead::plugins::bindings::TaskSpec;
    let plugin = host.get("runtime-egress-probe").unwrap();
    let spec = TaskSpec {
        agent_id: "tk-egress".into(),
        command: Vec::new(),
        image: authority.into(),
        container_args: Vec::new(),
        env: Vec::new(),
        workspace: "/nonexistent".into(),
        workspace_mount: "/data".into(),
        run_as_uid: None,
        log_path: "/nonexistent/log".into(),
        port: 1,
        stop_signal: agentstead::plugins::StopSignal::Term,
        stop_grace_ms: 0,
        settings: Vec::new(),
    };
    let outcome = host
        .runtime_call(&plugin, "tk-egress", "/nonexistent".into(), Duration::ZERO, move |r, s| {
            Box::pin(async move { r.agentstead_plugin_runtime_driver().call_create(s, &spec).await })
        })
        .await;
    outcome.expect_err("the probe always reports through an error").to_string()
}

#[tokio::test]
async fn plugin_requests_reach_only_granted_endpoints() {
    use agentstead::plugins::{EgressGrant, Endpoint};
    let (granted, granted_hits) = counting_http_server();
    let (other, other_hits) = counting_http_server();

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(env!("AGENTSTEAD_EGRESS_PROBE_WASM"), dir.path().join("probe.wasm")).unwrap();
    let routes = std::collections::BTreeMap::from([("engine".to_string(), Endpoint::Tcp(granted.to_string()))]);
    let limits = Limits { memory_limit_mib: 64, call_timeout: Duration::from_secs(5) };
    let policy = Policy { egress: EgressGrant::new(routes), ..Policy::confined(limits) };
    let options = HostOptions {
        policies: std::collections::BTreeMap::from([("runtime-egress-probe".to_string(), policy)]),
        plugin_dir: Some(dir.path().to_path_buf()),
        ..HostOptions::confined(limits)
    };
    let supervisor = Arc::new(ProcessSupervisor::new(&ProcessRuntimeConfig::default()));
    let host = PluginHost::new(options, supervisor).await.unwrap();

    // The granted authority is connected to its endpoint.
    let reached = probe_egress(&host, "engine").await;
    assert!(reached.contains("answered HTTP 200"), "{reached}");
    assert_eq!(granted_hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Any other destination is rejected before a connection is made, by
    // address, by name, and with the granted endpoint's own address.
    for destination in [other.to_string(), format!("localhost:{}", other.port()), granted.to_string()] {
        let rejected = probe_egress(&host, &destination).await;
        assert!(rejected.contains("HttpRequestDenied"), "{destination}: {rejected}");
    }
    assert_eq!(other_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(granted_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn plugin_list_shows_builtins_and_files() {
    let server = Server::start().await;
    let output = server.cli(&["plugin", "list"], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    let row = |name: &str| text.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in:\n{text}")).to_string();
    let columns = |line: String| line.split_whitespace().take(5).map(String::from).collect::<Vec<_>>();
    assert_eq!(columns(row("runtime-docker")), ["runtime-docker", "runtime", "0.1.0", "0.1.0", "built-in"]);
    assert_eq!(columns(row("storage-tar"))[1], "storage");
    let testkit = columns(row("agent-testkit"));
    assert_eq!(testkit[1], "agent");
    assert!(testkit[4].ends_with("agent-testkit.wasm"), "{testkit:?}");

    // A broken file is listed with its reason; the others still are, and
    // the command fails.
    std::fs::write(server.data_dir.path().join("plugins").join("broken.wasm"), b"not a component").unwrap();
    let output = server.cli(&["plugin", "list"], None);
    assert!(!output.status.success(), "a broken plugin file must fail the listing");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().any(|line| line.starts_with("agent-testkit")), "{text}");
    assert!(text.lines().any(|line| line.starts_with("runtime-docker")), "{text}");
    let broken = text.lines().find(|line| line.contains("broken.wasm")).unwrap_or_else(|| panic!("{text}"));
    assert!(broken.contains("not loadable"), "{broken}");
    assert!(broken.contains("WebAssembly"), "{broken}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 file(s) in the plugin directory cannot be loaded"), "{stderr}");
}

#[test]
fn broken_plugin_creates_no_keys() {
    let data = tempfile::tempdir().unwrap();
    let plugins = data.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("broken.wasm"), b"not a component").unwrap();
    let config = data.path().join("agentstead.toml");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::fs::write(&config, format!("listen = \"{listen}\"\ndata_dir = {:?}\n[plugins]\ndir = {:?}\n", data.path(), plugins)).unwrap();

    let output = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("AGENTSTEAD_LOG", "warn")
        .env_remove("AGENTSTEAD_DATA_DIR")
        .env_remove("AGENTSTEAD_LISTEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "serve started with a broken plugin: {stderr}");
    assert!(stderr.contains("broken.wasm"), "{stderr}");
    assert!(!data.path().join("host.key").exists(), "a failed start created host.key");
    assert!(!data.path().join("age.key").exists(), "a failed start created age.key");
}

#[tokio::test]
async fn future_wit_version_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(env!("AGENTSTEAD_FUTURE_WASM"), dir.path().join("future.wasm")).unwrap();
    let limits = Limits { memory_limit_mib: 64, call_timeout: Duration::from_secs(5) };
    let options = HostOptions { plugin_dir: Some(dir.path().to_path_buf()), ..HostOptions::confined(limits) };
    let supervisor = Arc::new(ProcessSupervisor::new(&ProcessRuntimeConfig::default()));
    let error = PluginHost::new(options, supervisor).await.err().expect("a 0.2.0 plugin must not load").to_string();
    assert!(error.contains("future.wasm"), "{error}");
    assert!(error.contains("agentstead:plugin/agent-driver"), "{error}");
    assert!(error.contains("built for version 0.2.0"), "{error}");
    assert!(error.contains("accepts 0.1.x"), "{error}");
}

#[tokio::test]
async fn plugin_inspect_explains_a_component() {
    let server = Server::start().await;

    let output = server.cli(&["plugin", "inspect", TESTKIT_WASM], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("agentstead:plugin/agent-driver@0.1.0"), "{text}");
    assert!(text.contains("agentstead:plugin/types@0.1.0"), "{text}");
    assert!(text.contains("loadable: yes"), "{text}");
    assert!(text.contains("agent type: testkit"), "{text}");

    let output = server.cli(&["plugin", "inspect", env!("AGENTSTEAD_FUTURE_WASM")], None);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("agentstead:plugin/agent-driver@0.2.0"), "{text}");
    assert!(text.contains("loadable: no"), "{text}");
    assert!(text.contains("built for version 0.2.0"), "{text}");

    let not_wasm = server.data_dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "not a component").unwrap();
    let output = server.cli(&["plugin", "inspect", not_wasm.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("not a WebAssembly component"));

    // A core module, as a build for wasm32-unknown-unknown emits.
    let core_module = server.data_dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let output = server.cli(&["plugin", "inspect", core_module.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("core module"), "{text}");
    assert!(text.contains("wasm32-wasip2"), "{text}");
}

/// Returns `from_cache` and `elapsed_ms` of the newest "plugins loaded" line.
fn plugin_load_stats(log: &str) -> (u64, u64) {
    let line = log.lines().rev().find(|line| line.contains("plugins loaded")).expect("a plugins loaded line");
    let field = |name: &str| -> u64 {
        let start = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 1;
        line[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (field("from_cache"), field("elapsed_ms"))
}

#[tokio::test]
async fn restart_loads_plugins_from_the_cache() {
    let mut server = Server::start().await;
    let (cold_cached, cold_ms) = plugin_load_stats(&server.log());
    assert_eq!(cold_cached, 0, "a fresh data directory has no compiled plugins");

    server.kill();
    server.launch().await;
    let (warm_cached, warm_ms) = plugin_load_stats(&server.log());
    let plugins = std::fs::read_dir(server.data_dir.path().join("plugin-cache")).unwrap().count() as u64;
    assert!(plugins >= 8, "one compiled file per plugin: {plugins}");
    assert_eq!(warm_cached, plugins, "every plugin comes from the cache at the second start");
    eprintln!("plugin load: first start {cold_ms} ms, restart with a warm cache {warm_ms} ms");
}

#[tokio::test]
async fn sighup_swaps_in_a_replaced_builtin() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let pid = server.pid().unwrap() as i32;

    let replacement = server.data_dir.path().join("plugins").join("openclaw-python.wasm");
    std::fs::copy(env!("AGENTSTEAD_OPENCLAW_PYTHON_WASM"), &replacement).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.log().contains("plugins reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload within 20 s:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log().contains("plugin replaces one with the same name"));

    // The running server plans openclaw agents with the replacement now.
    let agent = server.deploy(&token, "openclaw", None).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}\n{}", server.log());
    let id = agent["id"].as_str().unwrap();
    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    let pid = health["runtime"]["pid"].as_u64().expect("a running agent reports its pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.split('\0').any(|entry| entry == "PLANNED_BY=agent-openclaw-python"), "{environ}");
}

/// Builds `examples/agent-pysite` with plain `cargo build`, outside this
/// workspace, and returns the component.
fn build_example_plugin() -> std::path::PathBuf {
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repository.join("target"))
        .join("examples");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(repository.join("examples/agent-pysite"))
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    // Settings of the cargo that runs the tests must not reach this build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "RUSTFLAGS" {
            command.env_remove(&key);
        }
    }
    let output = command.output().expect("run cargo");
    assert!(output.status.success(), "the example plugin does not build:\n{}", String::from_utf8_lossy(&output.stderr));
    target_dir.join("wasm32-wasip2/release/agent_pysite.wasm")
}

#[tokio::test]
async fn example_plugin_builds_out_of_tree_and_deploys() {
    let component = build_example_plugin();
    let mut server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "pysite", "region": "eu"})).await;
    assert_eq!(status, 400, "the type is unknown before the plugin is added: {body}");

    std::fs::copy(&component, server.data_dir.path().join("plugins/agent-pysite.wasm")).unwrap();
    server.kill();
    server.launch().await;
    let (status, body) = server.post(&token, "/api/agents/deploy?wait=true", json!({"agentType": "pysite", "region": "eu", "name": "docs <site>"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "ONLINE", "{body}\n{}", server.log());
    let id = body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ps-"), "{id}");
    let page = server.http.get(format!("{}/index.html", body["publicUrl"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<h1>docs &lt;site&gt;</h1>"));

    // The plan renames the secret `SITE_TOKEN` to `PYSITE_TOKEN`.
    let (status, _) = server.post(&token, &format!("/api/agents/{id}/secrets"), json!({"key": "SITE_TOKEN", "value": "site-secret-1"})).await;
    assert_eq!(status, 201);
    let (status, agent) = server.post_empty(&token, &format!("/api/agents/{id}/restart?wait=true")).await;
    assert_eq!((status, agent["status"].as_str()), (200, Some("ONLINE")), "{agent}");
    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    let pid = health["runtime"]["pid"].as_u64().expect("a running agent reports its pid");
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned();
    assert!(environ.split('\0').any(|entry| entry == "PYSITE_TOKEN=site-secret-1"));
}
