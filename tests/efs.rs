//! `embark efs mount` against the emulator: resolution of the mount target, waiting for it, errors, and
//! the missing-NFS path of this machine's kernel. Nothing here connects to a mount target's address:
//! the non-plan runs stop before (already mounted, or no NFSv4 client), and the rest are `--plan`.

mod common;

use common::{assert_has, emulator, Embark, Emulator, Instance};
use serde_json::{json, Value};

fn file_system(emu: &Emulator, zones: &[&str]) -> Value {
    emu.control(
        "POST",
        "efs",
        json!({"zones": zones, "token": common::unique("fs")}),
    )
}

fn config(fs: &str, mount_point: &std::path::Path, extra: &str) -> String {
    format!(
        "efs_deadline = \"20s\"\n[[efs]]\nfile_system = \"{fs}\"\nmount_point = \"{}\"\n{extra}",
        mount_point.display()
    )
}

/// EFS API calls about one file system.
fn efs_calls(emu: &Emulator, fs: &str) -> usize {
    emu.requests()
        .iter()
        .filter(|r| {
            r["service"] == "elasticfilesystem" && r["query"].as_str().unwrap_or("").contains(fs)
        })
        .count()
}

fn zone_id(emu: &Emulator, inst: &Instance) -> String {
    emu.instance(&inst.id)["availability_zone_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn plan_picks_the_mount_target_of_this_zone_and_changes_nothing() {
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a", "eu-west-1b"]);
    let id = fs["file_system_id"].as_str().unwrap();
    let inst = emu.launch_one(json!({"az": "eu-west-1b"}));
    let here = fs["mount_targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["availability_zone_id"] == zone_id(emu, &inst).as_str())
        .unwrap()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("efs");
    let run = Embark::new(emu, &inst)
        .config(&config(id, &mp, "options = [\"noatime\"]\nfstab = true\n"))
        .run(&["efs", "mount", "--plan"])
        .expect_code(0);
    let out = run.stdout();
    let ip = here["ip"].as_str().unwrap();
    assert!(out.contains(&format!("address: {ip}")), "{out}");
    assert!(
        out.contains(here["mount_target_id"].as_str().unwrap()),
        "{out}"
    );
    assert!(out.contains("DescribeMountTargets"), "{out}");
    assert!(
        out.contains(&format!(
            "mount(\"{ip}:/\", \"{}\", \"nfs4\", 0, \"nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,noatime,addr={ip}\")",
            mp.display()
        )),
        "{out}"
    );
    assert!(out.contains("_netdev,nofail"), "{out}");
    assert!(!mp.exists(), "--plan created the mount point");
    assert!(
        efs_calls(emu, id) >= 1,
        "the look-up is visible in the request log"
    );
}

#[test]
fn tag_configures_the_mounts() {
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a"]);
    let id = fs["file_system_id"].as_str().unwrap();
    let group = common::unique("efstag");
    emu.seed(
        json!({"name": group, "pool_size": 0, "lifecycle_hook": false,
                    "group_tags": {"embark:efs": format!("{id}:/shared=/mnt/{group}")}}),
    );
    let inst = emu.launch_one(json!({"group": group, "az": "eu-west-1a"}));
    let run = Embark::new(emu, &inst)
        .run(&["efs", "mount", "--plan"])
        .expect_code(0);
    assert_has(&run.stdout(), &format!("{id}:/shared on /mnt/{group}"));
    assert_has(&run.stdout(), ":/shared\", \"/mnt/");
}

#[test]
fn a_mount_target_created_while_waiting_is_found() {
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a"]);
    let id = fs["file_system_id"].as_str().unwrap().to_string();
    let inst = emu.launch_one(json!({"az": "eu-west-1b"}));
    let dir = tempfile::tempdir().unwrap();
    let waiting = Embark::new(emu, &inst)
        .config(&config(&id, &dir.path().join("efs"), ""))
        .spawn(&["efs", "mount", "--plan"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let created = emu.control(
        "POST",
        "efs/mount-target",
        json!({"file_system_id": id, "az": "eu-west-1b"}),
    );
    let run = waiting.wait().expect_code(0);
    assert_has(&run.stdout(), created["mount_target_id"].as_str().unwrap());
}

#[test]
fn no_mount_target_in_this_zone_names_the_zones_that_have_one() {
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a"]);
    let id = fs["file_system_id"].as_str().unwrap();
    let inst = emu.launch_one(json!({"az": "eu-west-1b"}));
    let other = fs["mount_targets"][0]["availability_zone_id"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = Embark::new(emu, &inst)
        .config(&config(id, &dir.path().join("efs"), "").replace("20s", "2s"))
        .run(&["efs", "mount", "--plan"])
        .expect_code(1);
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "no mount target in this instance's zone {}",
            zone_id(emu, &inst)
        )),
        "{err}"
    );
    assert!(err.contains(&format!("zones with one: {other}")), "{err}");
}

#[test]
fn unknown_file_system_is_a_configuration_error() {
    let emu = emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    let dir = tempfile::tempdir().unwrap();
    let run = Embark::new(emu, &inst)
        .config(&config("fs-0000dead", &dir.path().join("efs"), ""))
        .run(&["efs", "mount", "--plan"])
        .expect_code(2);
    assert_has(&run.stderr(), "file system fs-0000dead does not exist");
}

#[test]
fn already_mounted_is_nothing_to_do() {
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a"]);
    let id = fs["file_system_id"].as_str().unwrap();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("efs");
    let mountinfo = dir.path().join("mountinfo");
    std::fs::write(
        &mountinfo,
        format!(
            "22 1 8:1 / / rw - ext4 /dev/vda rw\n98 22 0:50 / {} rw,relatime - nfs4 10.42.0.4:/ rw,vers=4.1\n",
            mp.display()
        ),
    )
    .unwrap();
    let before = efs_calls(emu, id);
    let run = Embark::new(emu, &inst)
        .config(&config(id, &mp, ""))
        .env("EMBARK_MOUNTINFO", &mountinfo)
        .run(&["efs", "mount"])
        .expect_code(0);
    assert_has(&run.stdout(), "already mounted; nothing to do");
    assert_eq!(
        efs_calls(emu, id),
        before,
        "an already mounted file system needs no look-up"
    );
}

#[test]
fn missing_nfs4_client_is_a_clear_error_before_anything_changes() {
    assert!(
        !embark::efs::this_kernel_has_nfs4(),
        "this test is for kernels without an NFSv4 client (this machine's case)"
    );
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a"]);
    let id = fs["file_system_id"].as_str().unwrap();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("efs");
    let embark = Embark::new(emu, &inst).config(&config(id, &mp, "fstab = true\n"));
    let fstab = dir.path().join("fstab");
    let run = embark
        .env("EMBARK_FSTAB", &fstab)
        .run(&["efs", "mount"])
        .expect_code(1);
    let err = run.stderr();
    assert!(err.contains("the kernel has no NFSv4 client"), "{err}");
    assert!(
        !err.contains("ENODEV") && !err.contains("os error"),
        "raw errno: {err}"
    );
    assert!(!mp.exists() && !fstab.exists(), "something changed");
    let check = Embark::new(emu, &inst)
        .config(&config(id, &mp, ""))
        .run(&["check"])
        .expect_code(1);
    assert!(
        check
            .stdout()
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("efs") && l.contains("NFSv4")),
        "{}",
        check.stdout()
    );
}

#[test]
fn tls_without_efs_utils_says_what_is_needed() {
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a"]);
    let id = fs["file_system_id"].as_str().unwrap();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    let dir = tempfile::tempdir().unwrap();
    let run = Embark::new(emu, &inst)
        .config(&config(
            id,
            &dir.path().join("efs"),
            "tls = true\naccess_point = \"fsap-0123\"\n",
        ))
        .run(&["efs", "mount"])
        .expect_code(1);
    assert_has(&run.stderr(), "needs amazon-efs-utils");
    assert_has(&run.stderr(), "tls, accesspoint=fsap-0123");
}

#[test]
fn nothing_configured_is_nothing_to_do() {
    let emu = emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    let run = Embark::new(emu, &inst)
        .run(&["efs", "mount"])
        .expect_code(0);
    assert_has(&run.stdout(), "nothing to do");
}

#[test]
fn an_unresolvable_dns_name_falls_back_to_the_api() {
    // A resolver without name servers: the DNS name fails at once, with no query sent anywhere.
    let emu = emulator();
    let fs = file_system(emu, &["eu-west-1a", "eu-west-1b"]);
    let id = fs["file_system_id"].as_str().unwrap().to_string();
    let want = fs["mount_targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["availability_zone_id"] == "euw1-az1")
        .unwrap()
        .clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ip, found) = runtime.block_on(async {
        let resolver = embark::net::Resolver::hosts_only().unwrap();
        let config = aws_sdk_efs::Config::builder()
            .behavior_version(aws_sdk_efs::config::BehaviorVersion::latest())
            .region(aws_sdk_efs::config::Region::new("eu-west-1"))
            .endpoint_url(&emu.endpoint)
            .credentials_provider(aws_sdk_efs::config::Credentials::for_tests())
            .http_client(embark::net::aws_http_client(&resolver))
            .build();
        let place = embark::efs::Place {
            region: "eu-west-1".to_string(),
            zone_id: Some("euw1-az1".to_string()),
            use_dns: true,
        };
        embark::efs::resolve(
            &aws_sdk_efs::Client::from_conf(config),
            &resolver,
            &place,
            &id,
            std::time::Duration::from_secs(10),
            false,
        )
        .await
        .unwrap()
    });
    assert_eq!(ip.to_string(), want["ip"].as_str().unwrap());
    assert_eq!(
        found,
        embark::efs::Found::MountTarget {
            id: want["mount_target_id"].as_str().unwrap().to_string(),
            zone_id: "euw1-az1".to_string()
        }
    );
}

#[test]
fn a_one_zone_file_system_of_another_zone_fails_at_once_or_mounts_across_zones_when_asked() {
    let emu = emulator();
    let fs = emu.control(
        "POST",
        "efs",
        json!({"zones": ["eu-west-1a"], "one_zone": "eu-west-1a", "token": common::unique("onezone")}),
    );
    let id = fs["file_system_id"].as_str().unwrap();
    let target = fs["mount_targets"][0]["mount_target_id"].as_str().unwrap();
    let inst = emu.launch_one(json!({"az": "eu-west-1b"}));
    let dir = tempfile::tempdir().unwrap();
    // The deadline is long: failing at once is what the test shows (no waiting for a target that a
    // One Zone file system can never have here).
    let started = std::time::Instant::now();
    let run = Embark::new(emu, &inst)
        .config(&config(id, &dir.path().join("efs"), "").replace("20s", "5m"))
        .run(&["efs", "mount", "--plan"])
        .expect_code(1);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_has(&run.stderr(), "is an EFS One Zone file system in");
    let run = Embark::new(emu, &inst)
        .config(&config(id, &dir.path().join("efs"), "cross_zone = true\n"))
        .run(&["efs", "mount", "--plan"])
        .expect_code(0);
    assert_has(&run.stdout(), target);
}
