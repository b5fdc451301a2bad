//! Control-plane benchmarks; results and the machine go to docs/benchmarks.md.
//!
//! Run with `cargo bench --bench control_plane`. Each figure is printed with
//! a baseline measured in the same run:
//! 1. a driver `plan` call through wasmtime, fresh store per call;
//! 2. authenticated `GET /api/agents` with 100 agents against `GET /healthz`;
//! 3. deploy to `ONLINE` for OpenClaw against the same gateway started by
//!    hand until `/healthz` returns 200 (needs `AGENTSTEAD_OPENCLAW_BIN_DIR`);
//! 4. backup and restore of a workspace of mixed files (1 GiB, or
//!    `AGENTSTEAD_BENCH_BACKUP_MIB`) against `tar | zstd -3` and
//!    `tar | gzip -3` on the same data, with the host's peak memory;
//! 5. deploy to `ONLINE` on the Docker runtime against `docker run` by hand
//!    until the same probe returns 200, for the busybox test image and the
//!    OpenClaw image of `tests/docker/openclaw-image.sh` (needs an engine,
//!    found as the Docker tests find it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentstead::config::ProcessRuntimeConfig;
use agentstead::plugins::bindings::Target;
use agentstead::plugins::{DeployContext, Limits, PluginHost, ProcessSupervisor};
use common::{Options, Server};
use serde_json::json;

const PLAN_CALLS: usize = 2_000;
const LOAD_SECONDS: u64 = 5;
const LOAD_CONNECTIONS: usize = 8;
const OPENCLAW_RUNS: usize = 3;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn bench_plan() {
    let limits = Limits { memory_limit_mib: 64, call_timeout: Duration::from_secs(5) };
    let supervisor = Arc::new(ProcessSupervisor::new(&ProcessRuntimeConfig::default()));
    let host = PluginHost::new(agentstead::plugins::HostOptions::confined(limits), supervisor).await.expect("load the built-in plugins");
    let driver = host.agent_type("openclaw").expect("openclaw plugin");
    let context = DeployContext {
        agent_id: "oc-bench1".into(),
        name: "bench".into(),
        region: "eu".into(),
        target: Target::Process,
        port: 20000,
        workspace: "/tmp/agentstead-bench/workspace".into(),
        secret_names: vec!["ANTHROPIC_API_KEY".into()],
    };

    for _ in 0..50 {
        host.plan(&driver, &context).await.unwrap();
    }
    let mut samples = Vec::with_capacity(PLAN_CALLS);
    for _ in 0..PLAN_CALLS {
        let started = Instant::now();
        host.plan(&driver, &context).await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "plan call through wasmtime (agent-openclaw, fresh store, {PLAN_CALLS} calls): median {:.1} µs, p99 {:.1} µs",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6
    );
}

/// Requests per second that `LOAD_CONNECTIONS` concurrent clients get from `url`.
async fn requests_per_second(url: &str, token: Option<&str>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..LOAD_CONNECTIONS {
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).build().unwrap();
        let (url, token, stop, done) = (url.to_string(), token.map(String::from), Arc::clone(&stop), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut request = client.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.unwrap();
                assert!(response.status().is_success(), "{url}: {}", response.status());
                response.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(LOAD_SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn bench_list_agents() {
    let server = Server::start_with(Options { testkit: false, ports: 120, ..Options::default() }).await;
    let token = server.user_with_token("bench@example.com");
    // OpenFang is not installed here, so each agent settles in ERROR at once
    // and the list contains 100 rows without 100 running processes.
    for _ in 0..100 {
        let (status, body) = server.post(&token, "/api/agents/deploy", json!({"agentType": "openfang", "region": "eu"})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, list) = server.get(&token, "/api/agents").await;
    assert_eq!(list["agents"].as_array().unwrap().len(), 100);

    let tokens = requests_per_second(&format!("{}/api/user/tokens", server.url), Some(&token)).await;
    let healthz = requests_per_second(&format!("{}/healthz", server.url), None).await;
    let agents = requests_per_second(&format!("{}/api/agents", server.url), Some(&token)).await;
    println!(
        "GET /api/agents (100 agents, bearer token) {agents:.0} req/s vs GET /healthz {healthz:.0} req/s: ratio {:.3} \
         ({LOAD_CONNECTIONS} connections, {LOAD_SECONDS} s each)",
        agents / healthz
    );
    println!(
        "GET /api/user/tokens (one token, bearer token) {tokens:.0} req/s vs GET /healthz: ratio {:.3}",
        tokens / healthz
    );
}

async fn wait_for_healthz(client: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Starts the gateway the way the openclaw plugin plans it and times it to a healthy `/healthz`.
async fn openclaw_by_hand(bin_dir: &Path, port: u16) -> Duration {
    let workspace = tempfile::tempdir().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())))
        .unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin_dir.join("openclaw"))
        .args(["gateway", "--port", &port.to_string(), "--allow-unconfigured", "--auth", "token", "--bind", "loopback"])
        .env("PATH", path)
        .env("HOME", workspace.path())
        .env("OPENCLAW_STATE_DIR", workspace.path())
        .env("OPENCLAW_CONFIG_PATH", workspace.path().join("openclaw.json"))
        .env("OPENCLAW_GATEWAY_TOKEN", "benchmark-token-benchmark-token")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start openclaw");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let healthy = wait_for_healthz(&client, &format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    assert!(healthy, "openclaw started by hand never answered /healthz");

    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    common::processes_under(workspace.path()).into_iter().for_each(|pid| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    });
    elapsed
}

async fn deploy_through_api(server: &Server, token: &str, agent_type: &str) -> Duration {
    let started = Instant::now();
    let (status, agent) = server.post(token, "/api/agents/deploy", json!({"agentType": agent_type, "region": "eu"})).await;
    assert_eq!(status, 201, "{agent}");
    let id = agent["id"].as_str().unwrap().to_string();
    loop {
        let (_, agent) = server.get(token, &format!("/api/agents/{id}")).await;
        match agent["status"].as_str().unwrap() {
            "ONLINE" => break,
            "ERROR" => panic!("{agent_type} deploy failed: {agent}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{agent_type} did not become ONLINE");
    }
    let elapsed = started.elapsed();
    let (status, _) = server.delete(token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 204);
    elapsed
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

async fn bench_openclaw() {
    let Some(bin_dir) = std::env::var_os("AGENTSTEAD_OPENCLAW_BIN_DIR").map(PathBuf::from) else {
        println!("deploy to ONLINE for OpenClaw: skipped, set AGENTSTEAD_OPENCLAW_BIN_DIR to measure it");
        return;
    };
    let server = Server::start_with(Options { search_path: vec![bin_dir.clone()], testkit: false, ..Options::default() }).await;
    let token = server.user_with_token("bench@example.com");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let mut by_hand = Vec::new();
    let mut through_api = Vec::new();
    for _ in 0..OPENCLAW_RUNS {
        by_hand.push(openclaw_by_hand(&bin_dir, port).await);
        through_api.push(deploy_through_api(&server, &token, "openclaw").await);
    }
    let (by_hand, through_api) = (median(by_hand), median(through_api));
    println!(
        "OpenClaw deploy to ONLINE {:.2} s vs started by hand to /healthz {:.2} s: ratio {:.2} (median of {OPENCLAW_RUNS})",
        through_api.as_secs_f64(),
        by_hand.as_secs_f64(),
        through_api.as_secs_f64() / by_hand.as_secs_f64()
    );
}

/// One image measured on the Docker runtime.
struct ContainerCase {
    agent_type: &'static str,
    image: String,
    uid: u32,
    mount: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

/// Runs a container the way `runtime-docker` does, by hand with the
/// `docker` client, and times it until `/healthz` returns 200.
async fn container_by_hand(engine: &common::docker::Engine, case: &ContainerCase, port: u16) -> Duration {
    let workspace = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(workspace.path(), Some(case.uid), Some(case.uid)).unwrap();
    let name = format!("agentstead-bench-{port}");
    let publish = format!("127.0.0.1:{port}:{port}");
    let volume = format!("{}:{}", workspace.path().display(), case.mount);
    let user = format!("{uid}:{uid}", uid = case.uid);
    let mut command: Vec<String> = ["run", "-d", "--name", &name, "-p", &publish, "-v", &volume, "--user", &user].map(String::from).to_vec();
    for (key, value) in &case.env {
        command.push("-e".into());
        command.push(format!("{key}={value}"));
    }
    command.push(case.image.clone());
    command.extend(case.args.iter().cloned());
    let command: Vec<&str> = command.iter().map(String::as_str).collect();

    let started = Instant::now();
    engine.docker(&command);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let healthy = wait_for_healthz(&client, &format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    engine.docker(&["rm", "-f", &name]);
    assert!(healthy, "{} run by hand never returned 200 on /healthz", case.image);
    elapsed
}

async fn bench_docker() {
    let Some(engine) = common::docker::Engine::find() else {
        println!("deploy to ONLINE on Docker: skipped, no Docker Engine");
        return;
    };
    engine.build_testkit_image("agentstead/testkit:latest", "bench");
    let openclaw_image = std::env::var("AGENTSTEAD_OPENCLAW_IMAGE").unwrap_or_else(|_| "agentstead/openclaw:2026.9.6".into());
    let extra_config = format!(
        "[regions.eu]\nruntime = \"runtime-docker\"\n\n[runtime.docker]\nendpoint = \"{}\"\npull = \"missing\"\n\n[agent_types.openclaw]\nimage = \"{openclaw_image}\"\n",
        engine.endpoint
    );
    let server = Server::start_with(Options { call_timeout_ms: 10_000, extra_config, ..Options::default() }).await;
    let token = server.user_with_token("bench@example.com");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let serve = format!("mkdir -p /data/www && echo ok > /data/www/healthz && exec httpd -f -p 0.0.0.0:{port} -h /data/www");
    let mut cases = vec![ContainerCase {
        agent_type: "testkit",
        image: "agentstead/testkit:latest".into(),
        uid: 65534,
        mount: "/data",
        args: vec!["/bin/sh".into(), "-c".into(), serve],
        env: Vec::new(),
    }];
    let has_openclaw = engine.docker_command(&["image", "inspect", &openclaw_image]).output().is_ok_and(|o| o.status.success());
    if has_openclaw {
        cases.push(ContainerCase {
            agent_type: "openclaw",
            image: openclaw_image.clone(),
            uid: 1000,
            mount: "/home/node/.openclaw",
            args: ["openclaw", "gateway", "--port", &port.to_string(), "--allow-unconfigured", "--auth", "token", "--bind", "lan"]
                .map(String::from)
                .to_vec(),
            env: vec![
                ("OPENCLAW_STATE_DIR", "/home/node/.openclaw"),
                ("OPENCLAW_CONFIG_PATH", "/home/node/.openclaw/openclaw.json"),
                ("HOME", "/home/node/.openclaw"),
                ("OPENCLAW_GATEWAY_TOKEN", "benchmark-token-benchmark-token"),
                ("NO_COLOR", "1"),
            ],
        });
    } else {
        println!("OpenClaw on Docker: skipped, the engine has no image {openclaw_image}");
    }

    for case in &cases {
        let mut by_hand = Vec::new();
        let mut through_api = Vec::new();
        for _ in 0..OPENCLAW_RUNS {
            by_hand.push(container_by_hand(&engine, case, port).await);
            through_api.push(deploy_through_api(&server, &token, case.agent_type).await);
        }
        let (by_hand, through_api) = (median(by_hand), median(through_api));
        println!(
            "{} on Docker: deploy to ONLINE {:.2} s vs docker run by hand to /healthz {:.2} s: ratio {:.2} (median of {OPENCLAW_RUNS})",
            case.agent_type,
            through_api.as_secs_f64(),
            by_hand.as_secs_f64(),
            through_api.as_secs_f64() / by_hand.as_secs_f64()
        );
    }
}

/// Fills `root` with `total` bytes in files of 1 to 8 MiB: half random
/// bytes, half repetitive text, as agent workspaces mix both.
fn fill_mixed_workspace(root: &Path, total: u64) {
    let mut written = 0u64;
    let mut index = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while written < total {
        let size = (((index * 7919) % 8) + 1) * 1024 * 1024;
        let size = size.min(total - written) as usize;
        let dir = root.join(format!("dir{}", index % 16));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = if index % 2 == 0 {
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        } else {
            format!("line {index}: the agent wrote some notes about its work\n").into_bytes().into_iter().cycle().take(size).collect()
        };
        std::fs::write(dir.join(format!("file{index}.dat")), content).unwrap();
        written += size as u64;
        index += 1;
    }
}

fn time_shell(script: &str) -> Duration {
    let started = Instant::now();
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
    started.elapsed()
}

fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn bench_backup() {
    let mib: u64 = std::env::var("AGENTSTEAD_BENCH_BACKUP_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let extra_config = "[backups]\nquota_bytes = 1099511627776\ntimeout_secs = 7200\n".to_string();
    let server = Server::start_with(Options { extra_config, ..Options::default() }).await;
    let token = server.user_with_token("bench@example.com");
    let agent = server.deploy(&token, "testkit", None).await;
    let id = agent["id"].as_str().unwrap().to_string();
    let workspace = server.data_dir.path().join("agents").join(&id).join("workspace");
    fill_mixed_workspace(&workspace, mib * 1024 * 1024);
    let pid = server.pid().unwrap();
    let memory_before = peak_memory_kib(pid);

    let scratch = tempfile::tempdir().unwrap();
    let ws = workspace.display();
    let out = scratch.path().display();
    let zstd_backup = time_shell(&format!("tar -C {ws} -c . | zstd -3 -q -o {out}/w.tar.zst"));
    let gzip_backup = time_shell(&format!("tar -C {ws} -c . | gzip -3 > {out}/w.tar.gz"));

    let started = Instant::now();
    let (status, backup) = server.post_empty(&token, &format!("/api/agents/{id}/workspace/backup")).await;
    assert_eq!(status, 201, "{backup}");
    let api_backup = started.elapsed();
    let memory_backup = peak_memory_kib(pid);
    let backup_id = backup["id"].as_str().unwrap().to_string();

    std::fs::create_dir(scratch.path().join("zx")).unwrap();
    std::fs::create_dir(scratch.path().join("gx")).unwrap();
    let zstd_restore = time_shell(&format!("zstd -d -q -c {out}/w.tar.zst | tar -C {out}/zx -x"));
    let gzip_restore = time_shell(&format!("gzip -d -c {out}/w.tar.gz | tar -C {out}/gx -x"));
    let started = Instant::now();
    let (status, body) = server.post_empty(&token, &format!("/api/agents/{id}/workspace/backups/{backup_id}/restore")).await;
    assert_eq!(status, 200, "{body}");
    let api_restore = started.elapsed();
    let memory_restore = peak_memory_kib(pid);

    let zstd_size = std::fs::metadata(scratch.path().join("w.tar.zst")).unwrap().len();
    println!(
        "backup of {mib} MiB: API {:.1} s ({} bytes) vs tar|zstd -3 {:.1} s ({zstd_size} bytes): ratio {:.2}; vs tar|gzip -3 {:.1} s: ratio {:.2}",
        api_backup.as_secs_f64(),
        backup["size"],
        zstd_backup.as_secs_f64(),
        api_backup.as_secs_f64() / zstd_backup.as_secs_f64(),
        gzip_backup.as_secs_f64(),
        api_backup.as_secs_f64() / gzip_backup.as_secs_f64()
    );
    println!(
        "restore of {mib} MiB (stop, extract, swap, start): API {:.1} s vs zstd -d|tar -x {:.1} s: ratio {:.2}; vs gzip -d|tar -x {:.1} s: ratio {:.2}",
        api_restore.as_secs_f64(),
        zstd_restore.as_secs_f64(),
        api_restore.as_secs_f64() / zstd_restore.as_secs_f64(),
        gzip_restore.as_secs_f64(),
        api_restore.as_secs_f64() / gzip_restore.as_secs_f64()
    );
    println!(
        "host peak resident memory: {} MiB before, {} MiB after the backup, {} MiB after the restore",
        memory_before / 1024,
        memory_backup / 1024,
        memory_restore / 1024
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects benchmarks by name.
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    let selected = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if selected("plan") {
        bench_plan().await;
    }
    if selected("list") {
        bench_list_agents().await;
    }
    if selected("openclaw") {
        bench_openclaw().await;
    }
    if selected("backup") {
        bench_backup().await;
    }
    if selected("docker") {
        bench_docker().await;
    }
}
