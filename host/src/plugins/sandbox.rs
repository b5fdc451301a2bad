//! The state of one plugin call: a fresh WASI context with nothing granted,
//! a memory cap, captured stderr and, for runtime plugins, a process grant
//! and the HTTP destinations the operator granted.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::agent::agentstead::plugin::logging::{self, Level};
use super::egress::{EgressGrant, EgressHooks};
use super::process::ProcessGrant;
use super::storage::StorageSession;

/// Bytes of a plugin's stderr kept per call; the tail goes into error messages.
const STDERR_CAPACITY: usize = 64 * 1024;
/// Log lines a plugin may emit per call; later lines are counted and dropped.
const MAX_LOG_LINES: u32 = 200;
/// Maximum length of a kept log line, in bytes; the rest is cut off.
const MAX_LOG_LINE: usize = 4096;

/// Store data of one plugin call.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryCap,
    pub(super) stderr: MemoryOutputPipe,
    plugin: Arc<str>,
    agent_id: Option<String>,
    log_lines: u32,
    pub(super) process: Option<ProcessGrant>,
    pub(super) storage: Option<StorageSession>,
    http: WasiHttpCtx,
    egress: EgressHooks,
}

impl PluginState {
    /// Builds the state for one call. The WASI context has no preopened
    /// directories, no environment, no arguments and no network, and stdout
    /// is discarded; only stderr is kept, for error reports.
    /// Outgoing HTTP goes only to the authorities in `egress`.
    pub fn new(
        plugin: Arc<str>,
        memory_limit: usize,
        agent_id: Option<String>,
        process: Option<ProcessGrant>,
        egress: EgressGrant,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { limit: memory_limit, exceeded: false },
            stderr,
            egress: EgressHooks::new(Arc::clone(&plugin), egress),
            plugin,
            agent_id,
            log_lines: 0,
            process,
            storage: None,
            http: WasiHttpCtx::new(),
        }
    }

    /// Returns the last `max` bytes the plugin wrote to stderr, as text.
    pub fn stderr_tail(&self, max: usize) -> String {
        let bytes = self.stderr.contents();
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&bytes[start..]).trim().to_string()
    }

    pub fn agent_id(&self) -> Option<&str> {
        self.agent_id.as_deref()
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

/// Caps linear memory per call and remembers whether the plugin hit the cap,
/// so the host can report exhaustion instead of the trap it causes.
pub struct MemoryCap {
    limit: usize,
    pub(super) exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit || maximum.is_some_and(|max| desired > max) {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // 100k function references is far above what a Rust plugin needs.
        Ok(desired <= 100_000 && maximum.is_none_or(|max| desired <= max))
    }
}

impl logging::Host for PluginState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin logged more than {MAX_LOG_LINES} lines in one call; dropping the rest");
            }
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        let agent_id = self.agent_id.as_deref().unwrap_or("-");
        match level {
            Level::Trace => tracing::trace!(plugin, agent_id, "{message}"),
            Level::Debug => tracing::debug!(plugin, agent_id, "{message}"),
            Level::Info => tracing::info!(plugin, agent_id, "{message}"),
            Level::Warn => tracing::warn!(plugin, agent_id, "{message}"),
            Level::Error => tracing::error!(plugin, agent_id, "{message}"),
        }
    }
}

impl super::bindings::agent::agentstead::plugin::types::Host for PluginState {}
