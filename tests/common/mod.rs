//! Test harness: runs the real `agentstead` binary on loopback with a data
//! directory of its own and talks to it over HTTP.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod docker;

pub const BIN: &str = env!("CARGO_BIN_EXE_agentstead");
pub const TESTKIT_WASM: &str = env!("AGENTSTEAD_TESTKIT_WASM");
pub const PASSWORD: &str = "correct-horse-battery";

/// First agent port of the next server of this test binary. Each server
/// gets a range of its own, so parallel tests never race for a port.
static NEXT_PORT: AtomicU16 = AtomicU16::new(21_000);

/// Settings of a test server.
pub struct Options {
    pub call_timeout_ms: u64,
    pub memory_limit_mib: u32,
    pub reconcile_interval_secs: u64,
    /// Directories searched for agent programs before `PATH`.
    pub search_path: Vec<PathBuf>,
    pub testkit: bool,
    /// Size of the server's agent port range.
    pub ports: u16,
    /// TOML tables appended to the generated config file.
    pub extra_config: String,
    /// `AGENTSTEAD_LOG` of the server.
    pub log_filter: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { call_timeout_ms: 3_000, memory_limit_mib: 64, reconcile_interval_secs: 1, search_path: Vec::new(), testkit: true, ports: 20, extra_config: String::new(), log_filter: "info,agentstead=debug".into() }
    }
}

pub struct Server {
    pub url: String,
    pub data_dir: tempfile::TempDir,
    config_path: PathBuf,
    log_filter: String,
    child: Option<Child>,
    pub http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Server {
        let data_dir = tempfile::Builder::new().prefix("agentstead-test-").tempdir().unwrap();
        let first_port = NEXT_PORT.fetch_add(options.ports, Ordering::SeqCst);
        let listen = format!("127.0.0.1:{}", free_port());

        let plugin_dir = data_dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        if options.testkit {
            std::fs::copy(TESTKIT_WASM, plugin_dir.join("agent-testkit.wasm")).unwrap();
        }
        let search_path: Vec<String> = options.search_path.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
        let config = format!(
            r#"listen = "{listen}"
data_dir = {data_dir:?}

[plugins]
dir = {plugin_dir:?}
call_timeout_ms = {call_timeout}
memory_limit_mib = {memory}

[agents]
port_range = [{first_port}, {last_port}]
reconcile_interval_secs = {reconcile}

[runtime.process]
allowed_programs = ["sh", "python3", "openclaw", "openfang", "nullclaw", "zeroclaw"]
search_path = [{search_path}]

{extra_config}
"#,
            data_dir = data_dir.path().display().to_string(),
            plugin_dir = plugin_dir.display().to_string(),
            call_timeout = options.call_timeout_ms,
            memory = options.memory_limit_mib,
            last_port = first_port + options.ports - 1,
            reconcile = options.reconcile_interval_secs,
            search_path = search_path.join(", "),
            extra_config = options.extra_config,
        );
        let config_path = data_dir.path().join("agentstead.toml");
        std::fs::write(&config_path, config).unwrap();

        let mut server = Server {
            url: format!("http://{listen}"),
            data_dir,
            config_path,
            log_filter: options.log_filter,
            child: None,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        server.launch().await;
        server
    }

    /// Starts the binary and waits until `/healthz` returns 200.
    pub async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("AGENTSTEAD_LOG", &self.log_filter)
            .env_remove("AGENTSTEAD_DATA_DIR")
            .env_remove("AGENTSTEAD_LISTEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agentstead");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.http.get(format!("{}/healthz", self.url)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agentstead exited with {status} during startup:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "agentstead did not answer /healthz within 30 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server with SIGKILL, as a crash would. Agents keep running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the binary's CLI against this server's data directory.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("AGENTSTEAD_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    pub fn create_user(&self, email: &str) {
        let output = self.cli(&["user", "create", "--email", email, "--password-stdin"], Some(PASSWORD));
        assert!(output.status.success(), "user create failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn create_token(&self, email: &str, scopes: &str) -> String {
        let output = self.cli(&["token", "create", "--email", email, "--name", "test", "--scopes", scopes], None);
        assert!(output.status.success(), "token create failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// Creates a user and returns a `full` token for it.
    pub fn user_with_token(&self, email: &str) -> String {
        self.create_user(email);
        self.create_token(email, "full")
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap();
        split(response).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let response = self.http.post(format!("{}{path}", self.url)).bearer_auth(token).json(&body).send().await.unwrap();
        split(response).await
    }

    pub async fn post_empty(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self.http.post(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap();
        split(response).await
    }

    pub async fn delete(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self.http.delete(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap();
        split(response).await
    }

    /// Deploys an agent and waits until it settles; returns the agent object.
    pub async fn deploy(&self, token: &str, agent_type: &str, name: Option<&str>) -> Value {
        let mut body = json!({"agentType": agent_type, "region": "eu"});
        if let Some(name) = name {
            body["name"] = json!(name);
        }
        let (status, agent) = self.post(token, "/api/agents/deploy?wait=true", body).await;
        assert_eq!(status, 201, "deploy answered {status}: {agent}\n{}", self.log());
        agent
    }

    /// Polls the agent until `status` or the timeout; returns the last agent object.
    pub async fn wait_for_status(&self, token: &str, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, agent) = self.get(token, &format!("/api/agents/{id}")).await;
            assert_eq!(code, 200, "{agent}");
            if agent["status"] == status || Instant::now() >= deadline {
                return agent;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills every process whose working directory lies in this server's
    /// data directory: the agents, which outlive the server by design.
    pub fn kill_agents(&self) {
        for pid in processes_under(self.data_dir.path()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        self.kill_agents();
        if std::thread::panicking() {
            eprintln!("--- agentstead log ---\n{}", self.log());
        }
    }
}

pub async fn split(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, body)
}

/// Pids of live processes whose working directory is under `dir`.
pub fn processes_under(dir: &Path) -> Vec<i32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else { continue };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        if cwd.starts_with(&dir) && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of live processes in the session `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state, ppid, pgrp, session.
        if fields.len() > 3 && fields[0] != "Z" && fields[3] == sid.to_string() {
            pids.push(pid);
        }
    }
    pids
}
