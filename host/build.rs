//! Builds the plugins under `plugins/` for `wasm32-wasip2` and embeds them.
//!
//! The plugins are ordinary workspace crates. This script runs a nested
//! `cargo build` for them with its own target directory, because the outer
//! build holds the lock on the main one, and writes `builtin_plugins.rs` with
//! one `include_bytes!` per component. The test-only plugins are built too and
//! their paths exposed to the tests through environment variables.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

/// Plugins embedded in the binary, in the order the host registers them.
const BUILTIN: &[&str] = &[
    "agent-openclaw",
    "agent-openfang",
    "agent-nullclaw",
    "agent-zeroclaw",
    "runtime-process",
    "runtime-docker",
    "storage-tar",
];
/// Plugins the tests load from files, with the variable that gives their path.
const TEST_ONLY: &[(&str, &str)] = &[
    ("agent-testkit", "AGENTSTEAD_TESTKIT_WASM"),
    ("runtime-egress-probe", "AGENTSTEAD_EGRESS_PROBE_WASM"),
    ("agent-future", "AGENTSTEAD_FUTURE_WASM"),
    ("agent-openclaw-python", "AGENTSTEAD_OPENCLAW_PYTHON_WASM"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ lives inside the workspace").to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    for watched in ["wit", "plugins", "tests/plugins", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }

    check_wasm_target();
    let wasm_dir = build_plugins(&workspace, &out_dir.join("wasm"));

    let mut source = String::from("/// Components compiled from `plugins/`, by plugin name.\n");
    source.push_str("pub const BUILTIN_PLUGINS: &[(&str, &[u8])] = &[\n");
    for name in BUILTIN {
        let path = component_path(&wasm_dir, name);
        writeln!(source, "    ({name:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
    }
    source.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), source).expect("write builtin_plugins.rs");

    for (name, variable) in TEST_ONLY {
        let path = component_path(&wasm_dir, name);
        println!("cargo:rustc-env={variable}={}", path.display());
    }
}

fn component_path(wasm_dir: &Path, crate_name: &str) -> PathBuf {
    wasm_dir.join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// Fails the build with the fix when the standard library for the plugin
/// target is not installed.
fn check_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(&rustc).args(["--print", "sysroot"]).output();
    let sysroot = match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        _ => panic!("`{rustc} --print sysroot` failed; is the Rust toolchain installed?"),
    };
    if !Path::new(&sysroot).join("lib/rustlib").join(TARGET).exists() {
        panic!(
            "\n\nThe Rust target `{TARGET}` is not installed, and AgentStead's plugins are built for it.\n\
             Install it with:\n\n    rustup target add {TARGET}\n\nthen build again.\n"
        );
    }
}

/// Runs the nested cargo build and returns the directory holding the `.wasm` files.
fn build_plugins(workspace: &Path, target_dir: &Path) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--target", TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(target_dir);
    for name in BUILTIN.iter().chain(TEST_ONLY.iter().map(|(name, _)| name)) {
        command.args(["-p", name]);
    }

    // The outer build's settings, such as its target and rustflags, must not
    // leak into the plugin build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let inherited_cargo_setting = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE";
        if inherited_cargo_setting || key == "RUSTFLAGS" || key == "RUSTC" || key == "RUSTC_WRAPPER" {
            command.env_remove(&key);
        }
    }

    let status = command.status().expect("run cargo to build the plugins");
    if !status.success() {
        panic!("building the plugins for {TARGET} failed ({status}); the cargo output above names the error");
    }
    target_dir.join(TARGET).join(PROFILE)
}
