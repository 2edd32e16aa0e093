//! Links the release binary with its executed functions gathered at the front of its code
//! (`deploy/linker/hot-code.ld`), which keeps fewer of its pages resident.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=deploy/linker/hot-code.ld");
    println!("cargo:rerun-if-env-changed=CHATTAIL_DEFAULT_CODE_ORDER");
    // Debug builds (the tests) link often and their layout does not matter; the linker
    // script uses GNU ld's syntax, which lld and GNU ld read on Linux.
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let opted_out = env::var_os("CHATTAIL_DEFAULT_CODE_ORDER").is_some_and(|v| v != "0");
    if release && linux && !opted_out {
        let script = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("deploy/linker/hot-code.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
