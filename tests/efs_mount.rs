//! The mount(2) path itself, for real, in a private mount namespace: embark's `efs::mount` mounts a file
//! system this kernel has (tmpfs), the mount table then shows it, and the NFSv4 call on this kernel (no
//! NFS client) gives the clear error, never a raw errno. Needs root (CAP_SYS_ADMIN); says so.
//!
//! Its own `main` (harness = false): unshare(CLONE_NEWNS) is refused to a process with threads.

use std::path::PathBuf;

use embark::efs::{self, EfsError, MountCall};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("mount_path_runs_for_real: test");
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "efs_mount needs root for mount(2) in a private namespace; CI runs as root"
    );
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    // Nothing mounted here may reach the machine's own mount table.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");

    let dir = tempfile::tempdir().expect("temp dir");
    let target: PathBuf = dir.path().join("efs");
    efs::create_mount_point(&target).expect("mount point");
    let call = MountCall {
        source: "embark-test".to_string(),
        target: target.clone(),
        fstype: "tmpfs",
        read_only: false,
        data: "size=1m,mode=0755".to_string(),
    };
    efs::mount(&call).expect("mount(2) of tmpfs");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let entry = efs::parse_mountinfo(&mountinfo)
        .into_iter()
        .find(|(mp, _, _)| *mp == target)
        .expect("the mount is in /proc/self/mountinfo");
    assert_eq!(
        (entry.1.as_str(), entry.2.as_str()),
        ("tmpfs", "embark-test")
    );
    std::fs::write(target.join("probe"), b"x").expect("the mounted file system is writable");
    nix::mount::umount(&target).expect("umount");

    // This kernel has no NFSv4 client: the real call must give the sentence, not ENODEV.
    assert!(
        !efs::this_kernel_has_nfs4(),
        "this check is for kernels without NFSv4 (this machine)"
    );
    let nfs = MountCall {
        source: "127.0.0.1:/".to_string(),
        target: target.clone(),
        fstype: "nfs4",
        read_only: false,
        data: efs::mount_options(&[], "127.0.0.1".parse().expect("ip")),
    };
    match efs::mount(&nfs) {
        Err(err @ EfsError::NoNfs4) => assert!(err.to_string().contains("no NFSv4 client")),
        other => panic!("expected the missing NFSv4 error, got {other:?}"),
    }
    println!("test mount_path_runs_for_real ... ok");
    println!("efs_mount: 1 passed, 0 failed");
}
