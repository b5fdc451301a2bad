//! Server configuration: a TOML file, then `AGENTSTEAD_*` variables and flags.
//!
//! Every field has a default that works on a laptop: SQLite and the agents'
//! workspaces in a data directory, the API on 127.0.0.1:8080, two regions
//! `eu` and `us` on the local process runtime. [`Config::validate`] checks the
//! whole file before the server binds its port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Error in the configuration file or in a setting that overrides it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid { setting: String, reason: String },
}

fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: setting.into(), reason: reason.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory of the database, workspaces, logs and the host key.
    /// Default: `agentstead` under the user's data directory
    /// (`~/.local/share/agentstead` on Linux).
    pub data_dir: PathBuf,
    /// `text` (default) or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// Largest request body the API accepts, in KiB; a larger one gets 413.
    /// Default 1024 (1 MiB), at most 65536.
    pub max_body_kib: u32,
    pub auth: AuthConfig,
    pub plugins: PluginConfig,
    pub agents: AgentConfig,
    /// Regions by name. Default: `eu` and `us`, both on `runtime-process`.
    pub regions: BTreeMap<String, RegionConfig>,
    pub runtime: RuntimeConfig,
    /// Per agent type, by `agentType`, such as `[agent_types.openclaw]`.
    pub agent_types: BTreeMap<String, AgentTypeConfig>,
    pub secrets: SecretsConfig,
    pub backups: BackupConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Object store of the backups: a URL such as `s3://bucket/prefix`, or
    /// none for local files under `blobs/` in the data directory.
    pub store_url: Option<String>,
    /// Options of the object store, as object_store names them, such as
    /// `aws_endpoint`, `aws_region` or `aws_allow_http`. Credentials may
    /// also come from the usual `AWS_*` environment variables.
    pub store_options: BTreeMap<String, String>,
    /// Storage plugin that encodes the archives. Default `storage-tar`.
    pub plugin: String,
    /// Bytes of complete backups one account may keep. Default 10 GiB.
    pub quota_bytes: u64,
    /// Unpinned backups kept per agent; older ones are deleted after each
    /// new backup. Pinned backups are never deleted automatically. Default 10.
    pub keep_unpinned: u32,
    /// Largest total content a restore writes, in bytes. Default 10 GiB.
    pub max_restore_bytes: u64,
    /// Lifetime of a download link, in seconds. Default 900.
    pub download_ttl_secs: u64,
    /// Time limit of one backup or restore, in seconds. Default 3600.
    pub timeout_secs: u64,
    /// Origin of download links for local stores, such as
    /// `https://agentstead.example.com`. Default: `http://` and the `Host`
    /// header of the request that asked for the link.
    pub download_base_url: Option<String>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            store_url: None,
            store_options: BTreeMap::new(),
            plugin: "storage-tar".into(),
            quota_bytes: 10 << 30,
            keep_unpinned: 10,
            max_restore_bytes: 10 << 30,
            download_ttl_secs: 900,
            timeout_secs: 3600,
            download_base_url: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// File of the age identity that encrypts secret values. Default:
    /// `age.key` in the data directory, created on first start. A configured
    /// file must exist. `AGENTSTEAD_AGE_IDENTITY` overrides both.
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a login session, in hours. Default 168 (a week).
    pub session_ttl_hours: u32,
    /// Marks the session cookie `Secure`. Turn it on whenever the API is
    /// served over TLS, directly or behind a proxy. Default false, because
    /// the default listener is plain HTTP on loopback.
    pub secure_cookie: bool,
    /// How often remembered `lastUsedAt` times are written to the database,
    /// in seconds. Default 30.
    pub last_used_flush_secs: u64,
}

/// Limits of the WebAssembly sandbox. Plugins get no filesystem, no network
/// and no environment; runtime plugins also get the `process` capability,
/// limited by [`ProcessRuntimeConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    /// Directory of extra `.wasm` components loaded at start. A component
    /// whose name matches a built-in replaces it. Default: none.
    pub dir: Option<PathBuf>,
    /// Linear memory a plugin call may use, in MiB. Default 64.
    pub memory_limit_mib: u32,
    /// Wall-clock limit of a plugin call, in milliseconds, on top of any
    /// stop grace period the call itself waits for. Default 10000.
    pub call_timeout_ms: u64,
    /// Limits and grants of single plugins, by plugin name, such as
    /// `[plugins.policy.runtime-process]`.
    pub policy: BTreeMap<String, PluginPolicyConfig>,
}

/// Limits and grants of one plugin. An unset field keeps the default: the
/// limits of `[plugins]`, and for grants nothing, except that
/// `runtime-process` may start `runtime.process.allowed_programs` and
/// `runtime-docker` may reach `runtime.docker.endpoint` as `docker`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginPolicyConfig {
    pub memory_limit_mib: Option<u32>,
    pub call_timeout_ms: Option<u64>,
    /// Programs a runtime plugin may start through the `process` capability.
    pub programs: Option<Vec<String>>,
    /// HTTP authorities a runtime plugin may address, each with the endpoint
    /// it reaches: `unix:///PATH` or `tcp://HOST:PORT`.
    pub endpoints: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// First and last port handed to agents, inclusive. Default 20000-20999.
    pub port_range: [u16; 2],
    /// How often the reconcile loop compares desired and observed state, in
    /// seconds. Default 10.
    pub reconcile_interval_secs: u64,
    /// Bytes of log output `GET /api/agents/{id}/logs` reads at most. Default 256 KiB.
    pub max_log_bytes: u32,
    /// Time a runtime may take to prepare an agent's task, such as pulling
    /// its image, in seconds. Default 600.
    pub create_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Runtime plugin that runs this region's agents. Default `runtime-process`.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Template of an agent's `publicUrl`, with `{id}`, `{region}` and
    /// `{port}` filled in. Default `http://127.0.0.1:{port}`.
    #[serde(default = "default_public_url")]
    pub public_url: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub process: ProcessRuntimeConfig,
    pub docker: DockerRuntimeConfig,
}

/// Settings of the `runtime-docker` plugin, which runs agents as containers
/// through the Docker Engine API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerRuntimeConfig {
    /// Address of the engine: `unix:///PATH` or `tcp://HOST:PORT` (plain
    /// HTTP). The plugin reaches it, and nothing else, as the authority
    /// `docker`. Default: `DOCKER_HOST` when set, else
    /// `unix:///var/run/docker.sock`.
    pub endpoint: String,
    /// `bridge` publishes each agent's port on `publish_address`; `host`
    /// shares the host's network, so the agent listens on the port directly.
    pub network: DockerNetwork,
    /// Host address the agents' ports are published on in bridge mode.
    /// Default `127.0.0.1`, so agents are reachable from this machine only.
    pub publish_address: std::net::IpAddr,
    /// When to pull an agent's image: `always` at deploy and redeploy,
    /// `missing` only when the engine lacks it, or `never`.
    pub pull: PullPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DockerNetwork {
    Bridge,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    Always,
    Missing,
    Never,
}

impl DockerNetwork {
    pub fn as_str(self) -> &'static str {
        match self {
            DockerNetwork::Bridge => "bridge",
            DockerNetwork::Host => "host",
        }
    }
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        }
    }
}

impl Default for DockerRuntimeConfig {
    fn default() -> Self {
        let endpoint = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        DockerRuntimeConfig {
            endpoint,
            network: DockerNetwork::Bridge,
            publish_address: std::net::IpAddr::from([127, 0, 0, 1]),
            pull: PullPolicy::Always,
        }
    }
}

/// Image choices for one agent type, applied to every container runtime.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTypeConfig {
    /// Replaces the agent-type plugin's image reference as a whole, such as
    /// `registry.example.com/openclaw:2026.9.6`.
    pub image: Option<String>,
    /// Replaces only the tag of the plugin's image, such as `2026.9.6`.
    pub tag: Option<String>,
}

impl AgentTypeConfig {
    /// Returns the image to run, given the plugin's default reference.
    pub fn image_for(&self, default: &str) -> String {
        let image = self.image.clone().unwrap_or_else(|| default.to_string());
        match &self.tag {
            // A digest pins the image, so the tag replaces it too.
            Some(tag) => format!("{}:{tag}", Self::repository_of(&image)),
            None => image,
        }
    }

    /// Returns an image reference without its tag and digest. A tag follows
    /// the last `:` after the last `/`; a `:` before it belongs to a
    /// registry's port.
    fn repository_of(image: &str) -> &str {
        let without_digest = image.split('@').next().unwrap_or(image);
        let name_start = without_digest.rfind('/').map_or(0, |slash| slash + 1);
        match without_digest[name_start..].rfind(':') {
            Some(colon) => &without_digest[..name_start + colon],
            None => without_digest,
        }
    }
}

/// Limits of the `process` capability that runtime plugins get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessRuntimeConfig {
    /// Program names a runtime plugin may start. Default: the four agent
    /// programs `openclaw`, `openfang`, `nullclaw` and `zeroclaw`.
    pub allowed_programs: Vec<String>,
    /// Directories searched for programs before the server's own `PATH`,
    /// such as an npm prefix's `bin`. They also come first in the agents'
    /// `PATH`, so a script finds its interpreter there. Default: none.
    pub search_path: Vec<PathBuf>,
}

fn default_runtime() -> String {
    "runtime-process".into()
}

fn default_public_url() -> String {
    "http://127.0.0.1:{port}".into()
}

impl Default for Config {
    fn default() -> Self {
        let region = RegionConfig { runtime: default_runtime(), public_url: default_public_url() };
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: default_data_dir(),
            log_format: LogFormat::Text,
            max_body_kib: 1024,
            auth: AuthConfig::default(),
            plugins: PluginConfig::default(),
            agents: AgentConfig::default(),
            regions: BTreeMap::from([("eu".to_string(), region.clone()), ("us".to_string(), region)]),
            runtime: RuntimeConfig::default(),
            agent_types: BTreeMap::new(),
            secrets: SecretsConfig::default(),
            backups: BackupConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { session_ttl_hours: 168, secure_cookie: false, last_used_flush_secs: 30 }
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig { dir: None, memory_limit_mib: 64, call_timeout_ms: 10_000, policy: BTreeMap::new() }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig { port_range: [20000, 20999], reconcile_interval_secs: 10, max_log_bytes: 256 * 1024, create_timeout_secs: 600 }
    }
}

impl Default for ProcessRuntimeConfig {
    fn default() -> Self {
        ProcessRuntimeConfig {
            allowed_programs: ["openclaw", "openfang", "nullclaw", "zeroclaw"].map(String::from).to_vec(),
            search_path: Vec::new(),
        }
    }
}

/// Returns the user's data directory, or the current directory when the platform has none.
fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("agentstead")
}

impl Config {
    /// Reads `path`, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
        config.expand_home();
        Ok(config)
    }

    /// Replaces a leading `~/` in every path setting with the user's home
    /// directory, as a shell would. TOML strings and quoted variables are
    /// not expanded by the shell, and a literal `~` directory is never meant.
    pub fn expand_home(&mut self) {
        let expand = |path: &mut PathBuf| {
            if let (Ok(rest), Some(home)) = (path.strip_prefix("~"), dirs::home_dir()) {
                *path = home.join(rest);
            }
        };
        expand(&mut self.data_dir);
        self.plugins.dir.iter_mut().for_each(expand);
        self.runtime.process.search_path.iter_mut().for_each(expand);
        self.secrets.identity_file.iter_mut().for_each(expand);
    }

    /// Checks settings that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=65_536).contains(&self.max_body_kib) {
            return Err(invalid("max_body_kib", format!("{} is out of range; give 1 to 65536 KiB", self.max_body_kib)));
        }
        let [first, last] = self.agents.port_range;
        if first == 0 || first > last {
            return Err(invalid(
                "agents.port_range",
                format!("[{first}, {last}] is empty or starts at 0; give the first and last port, such as [20000, 20999]"),
            ));
        }
        if self.regions.is_empty() {
            return Err(invalid("regions", "no region is configured; add a [regions.NAME] table"));
        }
        for (name, region) in &self.regions {
            if !is_region_name(name) {
                return Err(invalid(
                    format!("regions.{name}"),
                    "a region name is 1 to 32 lowercase letters, digits and dashes",
                ));
            }
            if !region.public_url.starts_with("http://") && !region.public_url.starts_with("https://") {
                return Err(invalid(
                    format!("regions.{name}.public_url"),
                    format!("`{}` must start with http:// or https://", region.public_url),
                ));
            }
        }
        if self.plugins.memory_limit_mib < 8 {
            return Err(invalid("plugins.memory_limit_mib", "must be at least 8"));
        }
        if self.plugins.call_timeout_ms < 100 {
            return Err(invalid("plugins.call_timeout_ms", "must be at least 100"));
        }
        for (name, policy) in &self.plugins.policy {
            let field = |key: &str| format!("plugins.policy.{name}.{key}");
            if let Some(mib) = policy.memory_limit_mib.filter(|mib| !(8..=4096).contains(mib)) {
                return Err(invalid(field("memory_limit_mib"), format!("{mib} MiB is out of range; use 8 to 4096")));
            }
            if let Some(ms) = policy.call_timeout_ms.filter(|ms| *ms < 100) {
                return Err(invalid(field("call_timeout_ms"), format!("{ms} ms is too short; use at least 100")));
            }
            for program in policy.programs.iter().flatten() {
                if program.is_empty() || program.contains('/') {
                    return Err(invalid(
                        field("programs"),
                        format!("`{program}` must be a bare program name; put directories in runtime.process.search_path"),
                    ));
                }
            }
            for (authority, endpoint) in policy.endpoints.iter().flatten() {
                let valid_authority = !authority.is_empty()
                    && authority.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
                if !valid_authority {
                    return Err(invalid(
                        field("endpoints"),
                        format!("`{authority}` must be a host name of lowercase letters, digits, dots and dashes"),
                    ));
                }
                crate::plugins::egress::Endpoint::parse(endpoint)
                    .map_err(|reason| invalid(format!("{}.{authority}", field("endpoints")), reason))?;
            }
        }
        if self.agents.reconcile_interval_secs == 0 {
            return Err(invalid("agents.reconcile_interval_secs", "must be at least 1"));
        }
        crate::plugins::egress::Endpoint::parse(&self.runtime.docker.endpoint)
            .map_err(|reason| invalid("runtime.docker.endpoint", reason))?;
        for (agent_type, settings) in &self.agent_types {
            for (field, value) in [("image", &settings.image), ("tag", &settings.tag)] {
                if let Some(value) = value {
                    let valid = !value.is_empty()
                        && !value.starts_with(['-', ':', '/', '@'])
                        && value.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c))
                        && (field == "image" || !value.contains(['/', ':', '@']))
                        && (field == "tag" || !AgentTypeConfig::repository_of(value).chars().any(|c| c.is_ascii_uppercase()));
                    if !valid {
                        return Err(invalid(
                            format!("agent_types.{agent_type}.{field}"),
                            format!("`{value}` is invalid; use an image reference such as `registry:5000/name:1.2` for image, or a tag such as `1.2` for tag"),
                        ));
                    }
                }
            }
        }
        for program in &self.runtime.process.allowed_programs {
            if program.is_empty() || program.contains('/') {
                return Err(invalid(
                    "runtime.process.allowed_programs",
                    format!("`{program}` must be a bare program name; put directories in runtime.process.search_path"),
                ));
            }
        }
        Ok(())
    }

    /// Returns the source of the age identity for secrets.
    pub fn key_source(&self) -> crate::secrets::KeySource {
        use crate::secrets::{IDENTITY_ENV, KeySource};
        if std::env::var_os(IDENTITY_ENV).is_some() {
            return KeySource::Env;
        }
        match &self.secrets.identity_file {
            Some(path) => KeySource::File { path: path.clone(), create: false },
            None => KeySource::File { path: self.data_dir.join("age.key"), create: true },
        }
    }

    /// Returns the directory of compiled plugins, inside the data directory.
    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.data_dir.join("plugin-cache")
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("agentstead.db")
    }

    /// Directory of one agent: its workspace, log file and generated files.
    pub fn agent_dir(&self, agent_id: &str) -> PathBuf {
        self.data_dir.join("agents").join(agent_id)
    }
}

fn is_region_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.regions.keys().collect::<Vec<_>>(), ["eu", "us"]);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let error = toml::from_str::<Config>("listne = \"127.0.0.1:1\"").unwrap_err();
        assert!(error.to_string().contains("listne"), "{error}");
    }

    #[test]
    fn region_table_overrides_defaults() {
        let config: Config = toml::from_str("[regions.lab]\npublic_url = \"https://{id}.lab.example\"\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.regions.len(), 1);
        assert_eq!(config.regions["lab"].runtime, "runtime-process");
    }

    #[test]
    fn home_is_expanded_in_paths() {
        let mut config: Config = toml::from_str("data_dir = \"~/agentstead-data\"").unwrap();
        config.expand_home();
        assert_eq!(config.data_dir, dirs::home_dir().unwrap().join("agentstead-data"));
    }

    #[test]
    fn empty_port_range_is_rejected() {
        let mut config = Config::default();
        config.agents.port_range = [3000, 2000];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("agents.port_range"), "{error}");
    }

    #[test]
    fn tag_replaces_only_the_tag() {
        let tag = |image: Option<&str>, tag: &str, default: &str| {
            AgentTypeConfig { image: image.map(String::from), tag: Some(tag.into()) }.image_for(default)
        };
        assert_eq!(tag(None, "1.2", "ghcr.io/openclaw/openclaw:latest"), "ghcr.io/openclaw/openclaw:1.2");
        assert_eq!(tag(None, "1.2", "busybox"), "busybox:1.2");
        assert_eq!(tag(Some("127.0.0.1:5000/oc"), "7", "x"), "127.0.0.1:5000/oc:7");
        assert_eq!(tag(Some("127.0.0.1:5000/oc:3@sha256:ab"), "7", "x"), "127.0.0.1:5000/oc:7");
        let whole = AgentTypeConfig { image: Some("local/oc:dev".into()), tag: None };
        assert_eq!(whole.image_for("ghcr.io/openclaw/openclaw:latest"), "local/oc:dev");
    }

    #[test]
    fn bad_image_settings_are_rejected() {
        for (field, value) in [("image", "-rm"), ("image", "a b"), ("image", "Library/OpenClaw:1"), ("tag", "1/2"), ("tag", "")] {
            let text = format!("[agent_types.openclaw]\n{field} = \"{value}\"\n");
            let config: Config = toml::from_str(&text).unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(&format!("agent_types.openclaw.{field}")), "{error}");
        }
    }

    #[test]
    fn docker_endpoint_must_be_unix_or_tcp() {
        let config: Config = toml::from_str("[runtime.docker]\nendpoint = \"ftp://x\"\n").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("runtime.docker.endpoint"), "{error}");
        let config: Config = toml::from_str("[runtime.docker]\nendpoint = \"tcp://127.0.0.1:2375\"\nnetwork = \"host\"\n").unwrap();
        config.validate().unwrap();
    }
}
