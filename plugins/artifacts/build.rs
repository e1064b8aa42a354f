//! Builds every plugin crate of the workspace for wasm32-wasip2, as part of the normal
//! build, and writes where each component and its folder are. The nested cargo uses its own
//! target folder, so it does not wait on the lock of the build that runs this script.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// (crate name, folder under plugins/) of each plugin to build.
const PLUGINS: &[(&str, &str)] = &[
    ("text-quality", "text-quality"),
    ("pii-redact", "pii-redact"),
    ("near-dup", "near-dup"),
    ("proportional", "proportional"),
    ("local-jsonl", "local-jsonl"),
    ("hostile", "hostile"),
    ("greedy-policy", "greedy-policy"),
    ("threshold", "threshold"),
    ("capped", "capped"),
    ("shapley-groups", "shapley-groups"),
    ("evm-sigclaim", "evm-sigclaim"),
    ("evm-merkle", "evm-merkle"),
    ("legacy-ledger", "legacy-ledger"),
];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let plugins_dir = manifest_dir.parent().expect("plugins/").to_path_buf();
    let root = plugins_dir.parent().expect("workspace root").to_path_buf();
    // Beside the outer build's own output, which may be moved with CARGO_TARGET_DIR.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    for (krate, _) in PLUGINS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--profile",
                "plugin",
                "--target",
                TARGET,
                "-p",
                krate,
            ])
            .env("CARGO_TARGET_DIR", &target_dir);
        // What cargo tells build scripts is about this build, not the nested one.
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_PROFILE_RELEASE_DEBUG",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_BUILD_TARGET",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd.status().expect("running cargo for the plugins");
        if !status.success() {
            panic!(
                "building plugin {krate} for {TARGET} failed (cargo's errors are above); \
                 if the target is missing, `rustup target add {TARGET}` (./dev does it)"
            );
        }
    }

    let out_dir = target_dir.join(TARGET).join("plugin");
    let mut code = String::from("// Written by build.rs.\n");
    for (krate, folder) in PLUGINS {
        let wasm = out_dir.join(format!("{}.wasm", krate.replace('-', "_")));
        let name = krate.replace('-', "_").to_uppercase();
        let dir = plugins_dir.join(folder);
        writeln!(
            code,
            "/// The `{krate}` plugin.\npub const {name}: Plugin = Plugin {{ name: {krate:?}, dir: {:?}, component: {:?} }};",
            dir.display().to_string(),
            wasm.display().to_string()
        )
        .expect("writing to a string");
    }
    writeln!(
        code,
        "/// Every plugin built.\npub const ALL: &[Plugin] = &[{}];",
        PLUGINS
            .iter()
            .map(|(k, _)| k.replace('-', "_").to_uppercase())
            .collect::<Vec<_>>()
            .join(", ")
    )
    .expect("writing to a string");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it")).join("plugins.rs");
    std::fs::write(out, code).expect("writing plugins.rs");

    println!("cargo:rerun-if-changed={}", root.join("sdk").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join(".cargo").join("config.toml").display()
    );
    for (_, folder) in PLUGINS {
        println!(
            "cargo:rerun-if-changed={}",
            plugins_dir.join(folder).display()
        );
    }
}
