//! Sets the SONAME of the cdylib to `libcuda.so.1`, and generates the pool of "unsupported call"
//! trampolines handed out by cuGetProcAddress for names we do not implement (each slot knows its
//! index, so the first call can log the function's name).

use std::fmt::Write as _;

const SLOTS: usize = 1024;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rerun-if-changed=build.rs");
    let mut s = String::new();
    for i in 0..SLOTS {
        let _ = writeln!(
            s,
            "extern \"C\" fn unsupported_{i}() -> u32 {{ crate::procaddr::unsupported_hit({i}) }}"
        );
    }
    let _ = writeln!(
        s,
        "pub(crate) static UNSUPPORTED: [extern \"C\" fn() -> u32; {SLOTS}] = ["
    );
    for i in 0..SLOTS {
        let _ = writeln!(s, "    unsupported_{i},");
    }
    let _ = writeln!(s, "];");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    std::fs::write(format!("{out}/unsupported_stubs.rs"), s).expect("OUT_DIR is writable");
}
