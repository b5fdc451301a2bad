//! Docker Engine helpers for the container tests: find or start an engine,
//! build small images without a registry, run a local registry, and talk
//! to the engine with the `docker` command-line client.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A reachable engine, given as `unix:///PATH` or `tcp://HOST:PORT`.
pub struct Engine {
    pub endpoint: String,
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn ping(endpoint: &str) -> bool {
    let mut command = Command::new("curl");
    command.args(["-fsS", "--max-time", "3"]);
    match endpoint.strip_prefix("unix://") {
        Some(socket) => command.args(["--unix-socket", socket, "http://docker/_ping"]),
        None => command.arg(format!("http://{}/_ping", endpoint.trim_start_matches("tcp://"))),
    };
    command.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success())
}

impl Engine {
    /// Returns the engine named by `AGENTSTEAD_DOCKER_HOST`, or one started
    /// by `tests/docker/engine.sh`. Without one the caller skips its test
    /// with a message, unless `AGENTSTEAD_REQUIRE_DOCKER=1`, as in CI,
    /// makes that a failure.
    pub fn find() -> Option<Engine> {
        if let Ok(endpoint) = std::env::var("AGENTSTEAD_DOCKER_HOST") {
            assert!(ping(&endpoint), "AGENTSTEAD_DOCKER_HOST={endpoint} does not respond to /_ping");
            return Some(Engine { endpoint });
        }
        let output = Command::new("sh").arg(repository_root().join("tests/docker/engine.sh")).output();
        match output {
            Ok(output) if output.status.success() => {
                let endpoint = String::from_utf8_lossy(&output.stdout).trim().to_string();
                Some(Engine { endpoint })
            }
            Ok(output) => {
                let reason = String::from_utf8_lossy(&output.stderr).trim().to_string();
                skip_or_fail(&reason)
            }
            Err(error) => skip_or_fail(&format!("cannot run tests/docker/engine.sh: {error}")),
        }
    }

    /// Runs the `docker` client against this engine and returns its stdout;
    /// panics with its stderr when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let output = self.docker_command(args).output().expect("run the docker client");
        assert!(
            output.status.success(),
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command.env("DOCKER_HOST", &self.endpoint).args(args);
        command
    }

    /// Returns `docker inspect` of one container or image as JSON.
    pub fn inspect(&self, name: &str) -> Value {
        let text = self.docker(&["inspect", name]);
        let mut list: Vec<Value> = serde_json::from_str(&text).expect("docker inspect prints JSON");
        list.remove(0)
    }

    /// Returns the ids of every container, running or not, labelled with `agent_id`.
    pub fn containers_of(&self, agent_id: &str) -> Vec<String> {
        let filter = format!("label=agentstead.agent-id={agent_id}");
        self.docker(&["ps", "-aq", "--filter", &filter]).lines().map(String::from).collect()
    }

    /// Builds an image `FROM scratch` with a static busybox as `/bin/sh`
    /// and `/bin/httpd`, and `/version` holding `version`.
    pub fn build_testkit_image(&self, tag: &str, version: &str) {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|path| path.is_file())
            .expect("a static busybox (Debian's busybox-static) is needed for the test image");
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(busybox, bin.join("busybox")).unwrap();
        for applet in ["sh", "httpd", "mkdir", "echo", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        std::fs::write(root.path().join("version"), format!("{version}\n")).unwrap();
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let status = self
            .docker_command(&["import", "-", tag])
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .expect("run docker import");
        assert!(tar.wait().unwrap().success(), "tar of the image root failed");
        assert!(status.success(), "docker import of {tag} failed");
    }

    /// Removes every container of the given agents.
    pub fn remove_agents(&self, agent_ids: &[String]) {
        for agent_id in agent_ids {
            for container in self.containers_of(agent_id) {
                let _ = self.docker_command(&["rm", "-f", &container]).stdout(Stdio::null()).status();
            }
        }
    }
}

fn skip_or_fail(reason: &str) -> Option<Engine> {
    if std::env::var("AGENTSTEAD_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("AGENTSTEAD_REQUIRE_DOCKER=1 but no Docker Engine could be started: {reason}");
    }
    eprintln!(
        "\n*** SKIPPED Docker test: no Docker Engine could be started ({reason}). ***\n\
         *** Install Debian's docker.io and run the tests as root, or set AGENTSTEAD_DOCKER_HOST. ***\n"
    );
    None
}

/// A Docker registry (Debian's `docker-registry`) on 127.0.0.1, stopped on drop.
pub struct Registry {
    pub address: String,
    child: std::process::Child,
    _storage: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let storage = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                storage.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's docker-registry is needed for the registry test");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {address}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry { address, child, _storage: storage }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
