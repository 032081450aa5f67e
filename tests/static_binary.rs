//! The release binary is static-pie and uses no host libc at run time: it runs inside an otherwise
//! empty chroot (only itself, /etc/hosts, /etc/resolv.conf and CA certificates) and reaches IMDS and the
//! AWS endpoint by host names that only that chroot's /etc/hosts knows.
//!
//! Needs the static build (`make static`) and root (chroot(2)); both are said, never skipped silently.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{emulator, unique, SECRET};
use serde_json::json;

fn static_binary() -> PathBuf {
    let path = std::env::var("EMBARK_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| common::repo().join("target/x86_64-unknown-linux-gnu/release/embark"));
    assert!(
        path.exists(),
        "static binary {} missing: build it with `make static` (the test command does)",
        path.display()
    );
    path
}

/// ELF header facts: (e_type, has PT_INTERP).
fn elf_kind(bytes: &[u8]) -> (u16, bool) {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let e_type = u16_at(0x10);
    let phoff = u64_at(0x20) as usize;
    let phentsize = u16_at(0x36) as usize;
    let phnum = u16_at(0x38) as usize;
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3 // PT_INTERP
    });
    (e_type, interp)
}

#[test]
fn release_binary_is_static_pie_and_small() {
    let bytes = std::fs::read(static_binary()).unwrap();
    let (e_type, interp) = elf_kind(&bytes);
    assert_eq!(e_type, 3, "static-pie is ET_DYN (position independent)");
    assert!(
        !interp,
        "a program interpreter means the host's dynamic loader and libc are needed"
    );
    assert!(
        bytes.len() < 15 * 1024 * 1024,
        "binary is {} bytes, over 15 MB",
        bytes.len()
    );
}

#[test]
fn identity_runs_in_an_empty_chroot_resolving_names_from_its_hosts_file() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root for chroot(2); CI runs as root"
    );
    let emu = emulator();
    let group = unique("chroot");
    emu.seed(json!({"name": group}));
    // Tags come from ec2:DescribeTags, so the AWS endpoint's host name must resolve too.
    let inst = emu.launch_one(json!({"group": group, "metadata_tags": false}));

    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(etc.join("ssl/certs")).unwrap();
    std::fs::copy(static_binary(), root.path().join("embark")).unwrap();
    std::fs::write(
        etc.join("hosts"),
        "127.0.0.1 imds.embark-chroot.test aws.embark-chroot.test\n",
    )
    .unwrap();
    // A name server that does not answer: a lookup that asked it before (or besides) /etc/hosts would
    // wait out its timeout on every connection and miss the 1 s IMDS connect timeout.
    std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    if let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
        std::fs::write(etc.join("ssl/certs/ca-certificates.crt"), pem).unwrap();
    }
    let entries: Vec<_> = walk(root.path());
    assert_eq!(
        entries,
        vec![
            "embark",
            "etc",
            "etc/hosts",
            "etc/resolv.conf",
            "etc/ssl",
            "etc/ssl/certs",
            "etc/ssl/certs/ca-certificates.crt"
        ]
        .into_iter()
        .filter(|e| !e.ends_with(".crt") || root.path().join(e).exists())
        .map(String::from)
        .collect::<Vec<_>>(),
        "the chroot holds only the binary and its four files"
    );

    let imds_port = emu.imds_base.rsplit(':').next().unwrap();
    let aws_port = emu.endpoint.rsplit(':').next().unwrap();
    let out = Command::new("chroot")
        .arg(root.path())
        .args(["/embark", "identity", "--json"])
        .env_clear()
        // Only for finding chroot(8) itself; embark never looks at PATH.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://imds.embark-chroot.test:{imds_port}/{}", inst.id),
        )
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://aws.embark-chroot.test:{aws_port}"),
        )
        .env("AWS_ACCESS_KEY_ID", "AKIDEMBARKTEST")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("EMBARK_CONFIG", "/etc/embark/embark.toml")
        .env("EMBARK_STATE_DIR", "/state")
        .output()
        .expect("run chroot");
    assert!(
        out.status.success(),
        "identity in the chroot failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(id["instance_id"], inst.id.as_str());
    assert_eq!(id["auto_scaling_group"], group.as_str());
    assert_eq!(id["tags_source"], "describe-tags");
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}
