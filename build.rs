//! Link options for the release binary on Linux, both about how much of the binary stays
//! resident:
//! - its executed functions gathered at the front of its code (`deploy/linker/hot-code.ld`);
//! - relative relocations packed (`-z pack-relative-relocs`, DT_RELR): about 16,000 of
//!   them, 380 KiB as plain RELA entries that the loader reads once and that then stay
//!   mapped, a few KiB packed. glibc's loader reads them from 2.36 on, so they are packed
//!   only where the build's own glibc is that recent (the binary needs it to run anyway).

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=deploy/linker/hot-code.ld");
    println!("cargo:rerun-if-env-changed=CHATTAIL_DEFAULT_CODE_ORDER");
    // Debug builds (the tests) link often and their layout does not matter; the linker
    // script uses GNU ld's syntax, which lld and GNU ld read on Linux.
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !release || !linux {
        return;
    }
    let opted_out = env::var_os("CHATTAIL_DEFAULT_CODE_ORDER").is_some_and(|v| v != "0");
    if !opted_out {
        let script = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("deploy/linker/hot-code.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
    let gnu = env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "gnu");
    let native = env::var("TARGET").ok() == env::var("HOST").ok();
    if gnu && native && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the build machine's glibc (`getconf GNU_LIBC_VERSION`, "glibc 2.36") is at
/// least `major.minor`; false when it cannot tell.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(output) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
