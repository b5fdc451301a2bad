//! The `agentstead` command: the server and its local administration.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use agentstead::app::{App, open_store};
use agentstead::auth::{AuthService, Scope};
use agentstead::config::{Config, LogFormat};
use agentstead::secrets::Keyring;

#[derive(Parser)]
#[command(name = "agentstead", version, about = "Self-hosted control plane for AI agents")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct GlobalArgs {
    /// TOML configuration file; every setting has a default.
    #[arg(long, global = true, env = "AGENTSTEAD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: database, workspaces, logs, keys and local backups. Overrides `data_dir` in the config file.
    #[arg(long, global = true, env = "AGENTSTEAD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server.
    Serve {
        /// Address to listen on. Overrides `listen` in the config file; default 127.0.0.1:8080.
        #[arg(long, env = "AGENTSTEAD_LISTEN", value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Create personal access tokens for the first login of scripts and CI.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the encryption of secret values.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Show the plugins this configuration loads.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// List every loaded plugin: name, kind, version, ABI and where it comes from.
    List,
    /// Show what a component file imports and exports, and whether this host
    /// can load it and why not. Exits with 1 when it cannot.
    Inspect {
        /// The `.wasm` component to inspect.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Generate a new age identity and re-encrypt every stored secret to it.
    /// Safe while the server runs; back up the new key file afterwards.
    RotateKey,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from standard input.
    Create {
        #[arg(long)]
        email: String,
        /// Read the password from standard input (required, so it stays out of the shell history).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print only its value on standard output.
    Create {
        /// Email of the user who owns the token.
        #[arg(long)]
        email: String,
        /// A label for the token.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: read, deploy, full.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Expiry as an RFC 3339 time, such as 2027-01-01T00:00:00Z; default: never.
        #[arg(long, value_name = "RFC3339")]
        expires_at: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", render_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// Joins an error with its causes, leaving out a cause whose text the
/// message already contains, as many library errors quote their source.
fn render_error(error: &anyhow::Error) -> String {
    let mut rendered = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if rendered.contains(&text) {
            continue;
        }
        if !rendered.is_empty() {
            rendered.push_str(": ");
        }
        rendered.push_str(&text);
    }
    rendered
}

fn load_config(global: &GlobalArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(global.config.as_deref())?;
    if let Some(dir) = &global.data_dir {
        config.data_dir = dir.clone();
    }
    config.expand_home();
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTSTEAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn,tokio_cron_scheduler=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(&cli.global)?;
    if let Ok(format) = std::env::var("AGENTSTEAD_LOG_FORMAT") {
        config.log_format = match format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => bail!("AGENTSTEAD_LOG_FORMAT is `{other}`; use `text` or `json`"),
        };
    }
    init_logging(config.log_format);

    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let listen = config.listen;
            App::open(config).await?.serve(listen).await
        }
        Command::User { command: UserCommand::Create { email, password_stdin: _ } } => create_user(&config, &email).await,
        Command::Token { command: TokenCommand::Create { email, name, scopes, expires_at } } => {
            create_token(&config, &email, &name, &scopes, expires_at.as_deref()).await
        }
        Command::Plugin { command: PluginCommand::List } => list_plugins(&config).await,
        Command::Plugin { command: PluginCommand::Inspect { file } } => {
            config.validate()?;
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let host = agentstead::app::load_plugins(&config, false).await?;
            let inspection = host.inspect(&bytes, &file.display().to_string()).await;
            println!("file: {}", file.display());
            println!("imports:");
            inspection.imports.iter().for_each(|name| println!("  {name}"));
            println!("exports:");
            inspection.exports.iter().for_each(|name| println!("  {name}"));
            match inspection.outcome {
                Ok(plugin) => {
                    let info = &plugin.info;
                    println!("loadable: yes");
                    println!("plugin: {} {} ({}), built against ABI {}", info.name, info.version, agentstead::plugins::kind_name(info.kind), info.abi);
                    if let Some(agent) = &plugin.agent {
                        println!("agent type: {} (id prefix {}, image {})", agent.agent_type, agent.id_prefix, agent.image);
                    }
                    if host.by_name().contains_key(&info.name) {
                        println!("note: it replaces the loaded plugin `{}` when placed in plugins.dir", info.name);
                    }
                    Ok(())
                }
                Err(reason) => {
                    println!("loadable: no");
                    println!("reason: {reason}");
                    Err(anyhow::anyhow!("{} cannot be loaded by this host", file.display()))
                }
            }
        }
        Command::Secrets { command: SecretsCommand::RotateKey } => {
            let database = config.database_path();
            if !database.exists() {
                bail!("no database at {}; point --data-dir or --config at the server's data directory", database.display());
            }
            let store = open_store(&config).await?;
            let keyring = Keyring::open(config.key_source())?;
            let count = keyring.rotate(&store).await?;
            let values = if count == 1 { "1 secret value".to_string() } else { format!("{count} secret values") };
            eprintln!("re-encrypted {values} to a new age identity; back up the new key file");
            Ok(())
        }
    }
}

async fn create_user(config: &Config, email: &str) -> anyhow::Result<()> {
    if !email.contains('@') || email.len() > 320 {
        bail!("`{email}` is not an email address");
    }
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.chars().count() < 8 {
        bail!("the password on standard input has fewer than 8 characters");
    }
    if password.len() > agentstead::auth::MAX_PASSWORD_BYTES {
        bail!("the password on standard input is longer than {} bytes", agentstead::auth::MAX_PASSWORD_BYTES);
    }
    let store = open_store(config).await?;
    let auth = AuthService::new(store, config.auth.session_ttl_hours)?;
    let id = auth.create_user(email, password).await?;
    tracing::info!(user_id = %id, email, "user created");
    Ok(())
}

/// Prints every plugin the server would load. Each file of the plugin
/// directory is tried on its own, so a file that cannot load is listed
/// with its reason and does not hide the others. The command then fails.
async fn list_plugins(config: &Config) -> anyhow::Result<()> {
    config.validate()?;
    let mut builtins_only = config.clone();
    builtins_only.plugins.dir = None;
    let host = agentstead::app::load_plugins(&builtins_only, false).await?;
    let mut plugins: std::collections::BTreeMap<String, std::sync::Arc<agentstead::plugins::LoadedPlugin>> =
        host.list().into_iter().map(|plugin| (plugin.info.name.clone(), plugin)).collect();

    let mut broken = Vec::new();
    if let Some(dir) = &config.plugins.dir {
        let files = agentstead::plugins::read_plugin_dir(dir)?;
        for (path, bytes) in files {
            match host.inspect(&bytes, &path.display().to_string()).await.outcome {
                // A file replaces the built-in of the same name, as at serve.
                Ok(plugin) => {
                    plugins.insert(plugin.info.name.clone(), std::sync::Arc::new(plugin));
                }
                Err(reason) => broken.push((path, reason)),
            }
        }
    }

    println!("{:<24} {:<8} {:<8} {:<6} {:<10} DESCRIPTION", "NAME", "KIND", "VERSION", "ABI", "SOURCE");
    for plugin in plugins.values() {
        let source = agentstead::plugins::source_label(&plugin.source);
        let kind = agentstead::plugins::kind_name(plugin.info.kind);
        let info = &plugin.info;
        println!("{:<24} {kind:<8} {:<8} {:<6} {source:<10} {}", info.name, info.version, info.abi, info.description);
    }
    for (path, reason) in &broken {
        println!("{:<24} not loadable: {reason}", path.display());
    }
    if !broken.is_empty() {
        bail!("{} file(s) in the plugin directory cannot be loaded; `agentstead plugin inspect FILE` shows details", broken.len());
    }
    Ok(())
}

async fn create_token(config: &Config, email: &str, name: &str, scopes: &[String], expires_at: Option<&str>) -> anyhow::Result<()> {
    let scopes = scopes
        .iter()
        .map(|scope| Scope::parse(scope.trim()).with_context(|| format!("unknown scope `{scope}`; use read, deploy or full")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let expires_at = match expires_at {
        Some(text) => {
            let time = chrono::DateTime::parse_from_rfc3339(text)
                .with_context(|| format!("--expires-at `{text}` is not an RFC 3339 time such as 2027-01-01T00:00:00Z"))?;
            if time.timestamp_millis() <= chrono::Utc::now().timestamp_millis() {
                bail!("--expires-at {text} is in the past");
            }
            Some(time.timestamp_millis())
        }
        None => None,
    };
    if name.trim().is_empty() || name.chars().count() > 100 {
        bail!("--name must have 1 to 100 characters");
    }

    let store = open_store(config).await?;
    let auth = AuthService::new(store, config.auth.session_ttl_hours)?;
    let user_id = auth.user_id_by_email(email).await?.with_context(|| {
        format!("no user with email `{email}`; create one with `agentstead user create --email {email} --password-stdin`")
    })?;
    let token = auth.create_token(&user_id, name.trim(), &scopes, expires_at).await?;
    tracing::info!(user_id, token_id = %token.id, "token created");
    println!("{}", token.value);
    Ok(())
}
