//! Records the versions that make the vectors: rustc (from `$RUSTC --version`) and the
//! serialization crates as locked in Cargo.lock. main.rs writes them to `rust/versions.json`.
use std::{env, fs, path::Path, process::Command};

const CRATES: [&str; 5] = ["serde", "rmp-serde", "rmp", "serde_bytes", "serde_json"];

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("--version")
        .output()
        .expect("run rustc --version");
    let version = String::from_utf8(out.stdout).expect("rustc --version is UTF-8");
    println!("cargo:rustc-env=VECTORS_RUSTC_VERSION={}", version.trim());

    let lock_path = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.lock");
    let lock = fs::read_to_string(&lock_path).expect("Cargo.lock is committed beside Cargo.toml");
    let mut found = Vec::new();
    let mut name: Option<String> = None;
    for line in lock.lines() {
        if let Some(rest) = line.strip_prefix("name = ") {
            name = Some(rest.trim_matches('"').to_string());
        } else if let Some(rest) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                if CRATES.contains(&n.as_str()) {
                    found.push(format!("{}={}", n, rest.trim_matches('"')));
                }
            }
        }
    }
    for crate_name in CRATES {
        let prefix = format!("{crate_name}=");
        assert!(
            found.iter().any(|f| f.starts_with(&prefix)),
            "{crate_name} is not in Cargo.lock"
        );
    }
    found.sort();
    println!("cargo:rustc-env=VECTORS_CRATE_VERSIONS={}", found.join(","));
}
