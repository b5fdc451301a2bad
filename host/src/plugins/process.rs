//! The `process` capability: the host starts, signals and measures agent
//! processes on behalf of a runtime plugin, within a grant.
//!
//! A grant allows one agent's directory and the programs on the configured
//! allowlist, nothing else. Every path a plugin passes must lie inside the
//! agent's directory after `..` and symlinks are resolved, and programs are
//! looked up by bare name in the configured search path and then `PATH`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::bindings::runtime::agentstead::plugin::process::{
    GroupStatus, GroupUsage, Host, ProcessError, SpawnRequest, Spawned,
};
use super::bindings::StopSignal;
use super::sandbox::PluginState;
use crate::config::ProcessRuntimeConfig;

/// Host variables an agent inherits; everything else comes from the plan.
/// `PATH` is set apart, see [`ProcessSupervisor::agent_path`].
const INHERITED_ENV: &[&str] = &["LANG", "TZ"];
/// Maximum wait for the exit status of a leader that just exited.
const REAP_WAIT: Duration = Duration::from_secs(1);
/// How often `wait-group` looks at the process table.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Starts agent processes and remembers how the ones it started ended.
#[derive(Debug)]
pub struct ProcessSupervisor {
    search_path: Vec<PathBuf>,
    /// Group leaders this host started, by pid: `None` until the leader has
    /// been reaped, then its exit status.
    exits: Arc<Mutex<HashMap<u32, Option<ExitStatus>>>>,
    /// Processes seen in each group at the last scan, as (pid, start time),
    /// so a member that was reparented away is still found.
    known: Mutex<HashMap<u32, HashSet<(i32, u64)>>>,
}

/// Access granted to one runtime call: the supervisor, one agent's
/// directory and the programs the calling plugin may start.
#[derive(Debug, Clone)]
pub struct ProcessGrant {
    pub supervisor: Arc<ProcessSupervisor>,
    pub root: PathBuf,
    pub programs: Arc<[String]>,
}

impl ProcessSupervisor {
    pub fn new(config: &ProcessRuntimeConfig) -> Self {
        ProcessSupervisor {
            search_path: config.search_path.clone(),
            exits: Arc::default(),
            known: Mutex::default(),
        }
    }

    /// Finds a program of `allowed` in the search path, then in `PATH`.
    pub fn resolve_program(&self, program: &str, allowed: &[String]) -> Result<PathBuf, ProcessError> {
        if !allowed.iter().any(|name| name == program) {
            let listed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return Err(ProcessError::Denied(format!(
                "program `{program}` is not allowed for this plugin (allowed: {listed}); add it to \
                 runtime.process.allowed_programs, or to plugins.policy.NAME.programs for another plugin"
            )));
        }
        let path_dirs = std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>());
        self.search_path
            .iter()
            .chain(path_dirs.iter().flatten())
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| ProcessError::ProgramNotFound(program.to_string()))
    }

    /// `PATH` of an agent: the search path, then the host's `PATH`, so a
    /// program found in the search path also finds its interpreter there
    /// (an npm prefix's `bin` contains both `openclaw` and `node`).
    fn agent_path(&self) -> std::ffi::OsString {
        let host_path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = self.search_path.iter().cloned().chain(std::env::split_paths(&host_path));
        std::env::join_paths(dirs).unwrap_or(host_path)
    }

    fn spawn(&self, grant: &ProcessGrant, request: SpawnRequest) -> Result<Spawned, ProcessError> {
        let program = self.resolve_program(&request.program, &grant.programs)?;
        let cwd = contained_path(&grant.root, &request.cwd)?;
        let log_path = contained_path(&grant.root, &request.log_path)?;
        let log = open_log(&log_path)?;
        let log_for_stderr = log.try_clone().map_err(os_error("duplicate the log file handle"))?;

        let mut command = tokio::process::Command::new(&program);
        command
            .args(&request.args)
            .env_clear()
            .envs(INHERITED_ENV.iter().filter_map(|name| std::env::var_os(name).map(|value| (*name, value))))
            .env("PATH", self.agent_path())
            .envs(request.env.iter().map(|var| (&var.name, &var.value)))
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .kill_on_drop(false);
        // A session of its own lets signals reach every process the agent
        // starts, including children that move to process groups of their
        // own. It also keeps a Ctrl-C meant for the host away from the agent.
        // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let mut child = command.spawn().map_err(os_error(&format!("start {}", program.display())))?;
        let pid = child.id().ok_or_else(|| ProcessError::Os("the started process has no pid".into()))?;
        let start_ticks = start_ticks(pid).unwrap_or(0);

        let exits = Arc::clone(&self.exits);
        exits.lock().unwrap_or_else(|poison| poison.into_inner()).insert(pid, None);
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    tracing::debug!(pid, %status, "agent process exited");
                    exits.lock().unwrap_or_else(|poison| poison.into_inner()).insert(pid, Some(status));
                }
                Err(error) => tracing::warn!(pid, %error, "failed to wait for agent process"),
            }
        });
        Ok(Spawned { pgid: pid, start_ticks })
    }

    /// `Some(None)` while a leader this host started awaits reaping.
    fn exit_of(&self, pid: u32) -> Option<Option<ExitStatus>> {
        self.exits.lock().unwrap_or_else(|poison| poison.into_inner()).get(&pid).copied()
    }

    async fn status(&self, group: Spawned) -> Result<GroupStatus, ProcessError> {
        let leader_alive = leader_alive(group);
        let members = self.group_members(group.pgid).len() as u32;
        let mut exit = self.exit_of(group.pgid);
        // A leader that just exited is a zombie until the waiting task reaps
        // it; its exit status follows within milliseconds.
        let deadline = Instant::now() + REAP_WAIT;
        while !leader_alive && exit == Some(None) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            exit = self.exit_of(group.pgid);
        }
        let exit = exit.flatten();
        if !leader_alive && members == 0 && exit.is_none() {
            return Err(ProcessError::NoSuchGroup(group.pgid));
        }
        Ok(GroupStatus {
            leader_alive,
            members,
            exit_code: exit.and_then(|status| status.code()),
            exit_signal: exit.and_then(|status| status.signal()),
        })
    }

    fn signal_group(&self, group: Spawned, signal: StopSignal) -> Result<(), ProcessError> {
        // Only processes found in the agent's session are signalled: a bare
        // id may belong to an unrelated process once every member is gone.
        self.send_to_members(group, to_signal(signal))
    }

    fn send_to_members(&self, group: Spawned, signal: Signal) -> Result<(), ProcessError> {
        let members = self.group_members(group.pgid);
        if members.is_empty() {
            return Err(ProcessError::NoSuchGroup(group.pgid));
        }
        for member in &members {
            match kill(Pid::from_raw(member.pid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(errno) => {
                    return Err(ProcessError::Os(format!("signal process {} of group {}: {errno}", member.pid, group.pgid)));
                }
            }
        }
        Ok(())
    }

    async fn wait_group(&self, group: Spawned, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.group_members(group.pgid).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Live processes of an agent: its session (whose id is the leader's pid),
    /// their descendants, and processes seen as members before. OpenClaw's
    /// gateway, for one, starts a broker in a session of its own, and the
    /// broker outlives the gateway by a few seconds once reparented to init.
    fn group_members(&self, pgid: u32) -> Vec<procfs::process::Stat> {
        let all: Vec<procfs::process::Stat> = match procfs::process::all_processes() {
            Ok(processes) => processes.filter_map(|process| process.ok()?.stat().ok()).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the process table");
                return Vec::new();
            }
        };
        let mut known = self.known.lock().unwrap_or_else(|poison| poison.into_inner());
        let remembered = known.remove(&pgid).unwrap_or_default();

        let mut member_pids: HashSet<i32> = all
            .iter()
            .filter(|stat| stat.session == pgid as i32 || remembered.contains(&(stat.pid, stat.starttime)))
            .map(|stat| stat.pid)
            .collect();
        loop {
            let children: Vec<i32> = all
                .iter()
                .filter(|stat| !member_pids.contains(&stat.pid) && member_pids.contains(&stat.ppid))
                .map(|stat| stat.pid)
                .collect();
            if children.is_empty() {
                break;
            }
            member_pids.extend(children);
        }

        let members: Vec<procfs::process::Stat> = all
            .into_iter()
            .filter(|stat| member_pids.contains(&stat.pid) && stat.state != 'Z' && stat.state != 'X')
            .collect();
        if !members.is_empty() {
            known.insert(pgid, members.iter().map(|stat| (stat.pid, stat.starttime)).collect());
        }
        members
    }

    fn usage(&self, group: Spawned) -> Result<GroupUsage, ProcessError> {
        let members = self.group_members(group.pgid);
        if members.is_empty() {
            return Err(ProcessError::NoSuchGroup(group.pgid));
        }
        let ticks_per_second = procfs::ticks_per_second().max(1);
        let page_size = procfs::page_size();
        let (mut ticks, mut rss_bytes) = (0u64, 0u64);
        for stat in &members {
            ticks += stat.utime + stat.stime;
            rss_bytes += stat.rss * page_size;
        }
        Ok(GroupUsage { cpu_time_ms: ticks * 1000 / ticks_per_second, rss_bytes, processes: members.len() as u32 })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Resolves `path` and checks that it lies inside `root`. The final
/// component may not exist yet, as for a log file written for the first time.
fn contained_path(root: &Path, path: &str) -> Result<PathBuf, ProcessError> {
    let requested = Path::new(path);
    let denied = || ProcessError::Denied(format!("path `{path}` is outside the agent's directory"));
    if !requested.is_absolute() {
        return Err(ProcessError::Denied(format!("path `{path}` must be absolute")));
    }
    let root = root.canonicalize().map_err(os_error(&format!("resolve {}", root.display())))?;
    let resolved = match requested.canonicalize() {
        Ok(resolved) => resolved,
        Err(_) => {
            let parent = requested.parent().ok_or_else(denied)?;
            let name = requested.file_name().ok_or_else(denied)?;
            parent.canonicalize().map_err(|_| denied())?.join(name)
        }
    };
    if resolved.starts_with(&root) { Ok(resolved) } else { Err(denied()) }
}

fn open_log(path: &Path) -> Result<std::fs::File, ProcessError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(os_error(&format!("open log file {}", path.display())))
}

fn os_error(action: &str) -> impl FnOnce(std::io::Error) -> ProcessError + '_ {
    move |error| ProcessError::Os(format!("{action}: {error}"))
}

fn start_ticks(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32).ok()?.stat().ok().map(|stat| stat.starttime)
}

/// True when the leader runs and is the process that was started, not a
/// later one that reused its pid.
fn leader_alive(group: Spawned) -> bool {
    let Ok(process) = procfs::process::Process::new(group.pgid as i32) else {
        return false;
    };
    let Ok(stat) = process.stat() else {
        return false;
    };
    stat.state != 'Z' && stat.state != 'X' && (group.start_ticks == 0 || stat.starttime == group.start_ticks)
}

fn to_signal(signal: StopSignal) -> Signal {
    match signal {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Kill => Signal::SIGKILL,
    }
}

/// Reads up to `max_bytes` from the end of `path`, starting after a line break.
fn read_tail(path: &Path, max_bytes: u32) -> std::io::Result<String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    let start = length.saturating_sub(u64::from(max_bytes));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((length - start) as usize);
    file.read_to_end(&mut bytes)?;
    if start > 0 {
        let first_break = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
        bytes.drain(..first_break);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

impl PluginState {
    fn grant(&self) -> Result<&ProcessGrant, ProcessError> {
        self.process.as_ref().ok_or_else(|| ProcessError::Denied("this plugin has no process capability".into()))
    }

    fn log_denied(&self, operation: &str, result: &Result<impl Sized, ProcessError>) {
        if let Err(ProcessError::Denied(reason)) = result {
            tracing::warn!(plugin = self.plugin(), agent_id = self.agent_id().unwrap_or("-"), operation, reason, "process capability denied a request");
        }
    }
}

impl Host for PluginState {
    async fn spawn(&mut self, request: SpawnRequest) -> Result<Spawned, ProcessError> {
        let result = self.grant().and_then(|grant| grant.supervisor.spawn(grant, request));
        self.log_denied("spawn", &result);
        result
    }

    async fn status(&mut self, group: Spawned) -> Result<GroupStatus, ProcessError> {
        let supervisor = Arc::clone(&self.grant()?.supervisor);
        supervisor.status(group).await
    }

    async fn signal_group(&mut self, group: Spawned, signal: StopSignal) -> Result<(), ProcessError> {
        self.grant()?.supervisor.signal_group(group, signal)
    }

    async fn wait_group(&mut self, group: Spawned, timeout_ms: u32) -> Result<bool, ProcessError> {
        let supervisor = Arc::clone(&self.grant()?.supervisor);
        Ok(supervisor.wait_group(group, Duration::from_millis(timeout_ms.into())).await)
    }

    async fn usage(&mut self, group: Spawned) -> Result<GroupUsage, ProcessError> {
        self.grant()?.supervisor.usage(group)
    }

    async fn suspend_group(&mut self, group: Spawned, suspended: bool) -> Result<(), ProcessError> {
        let supervisor = Arc::clone(&self.grant()?.supervisor);
        supervisor.send_to_members(group, if suspended { Signal::SIGSTOP } else { Signal::SIGCONT })
    }

    async fn read_log_tail(&mut self, log_path: String, max_bytes: u32) -> Result<String, ProcessError> {
        let grant = self.grant()?;
        let path = contained_path(&grant.root, &log_path);
        self.log_denied("read-log-tail", &path);
        read_tail(&path?, max_bytes).map_err(os_error(&format!("read {log_path}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_path_rejects_escape() {
        let root = tempfile::tempdir().unwrap();
        let outside = format!("{}/../etc/passwd", root.path().display());
        assert!(matches!(contained_path(root.path(), &outside), Err(ProcessError::Denied(_))));
        assert!(matches!(contained_path(root.path(), "relative/log"), Err(ProcessError::Denied(_))));
        let inside = format!("{}/agent.log", root.path().display());
        assert!(contained_path(root.path(), &inside).is_ok());
    }

    #[test]
    fn program_outside_allowlist_is_denied() {
        let supervisor = ProcessSupervisor::new(&ProcessRuntimeConfig::default());
        let allowed = ProcessRuntimeConfig::default().allowed_programs;
        let error = supervisor.resolve_program("sh", &allowed).unwrap_err();
        assert!(matches!(error, ProcessError::Denied(ref reason) if reason.contains("allowed_programs")), "{error:?}");
        let error = supervisor.resolve_program("openclaw", &[]).unwrap_err();
        assert!(matches!(error, ProcessError::Denied(ref reason) if reason.contains("allowed: none")), "{error:?}");
    }

    #[test]
    fn read_tail_starts_at_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(read_tail(&path, 15).unwrap(), "third\n");
        assert_eq!(read_tail(&path, 1000).unwrap(), "first line\nsecond line\nthird\n");
        assert_eq!(read_tail(&dir.path().join("missing"), 10).unwrap(), "");
    }
}
