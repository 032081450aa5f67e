//! `embark --version` names the commit it was built from: EMBARK_COMMIT if set (a release workflow),
//! else `git rev-parse`, else "unknown" (a source archive).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EMBARK_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=.git/packed-refs");
    let commit = std::env::var("EMBARK_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=EMBARK_COMMIT={commit}");
}
