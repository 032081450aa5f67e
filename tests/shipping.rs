//! What ships around the binary (issue 8): the user-data script run as it is, `check --image`,
//! `iam-policy`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{assert_has, emulator, repo, unique, Embark};
use embark::release::format::sha256_hex;
use serde_json::{json, Value};

#[test]
fn the_user_data_script_fetches_a_pinned_binary_boots_and_ends_in_service() {
    let emu = emulator();
    let name = unique("ud");
    let source = format!("s3://{name}-deploy/app");
    emu.seed(json!({"name": name, "pool_size": 2, "group_tags": {"embark:release": source}}));
    emu.push_files(&source, &[("index.php", "<?php echo 'ud';")]);
    // The pinned binary, served over HTTP as a release bucket would serve it.
    let binary = fs::read(common::binary()).expect("binary");
    let sha = sha256_hex(&binary);
    emu.s3_put(&format!("{name}-deploy"), "bin/embark", binary);
    let url = format!("{}/_embark/s3/{name}-deploy/bin/embark", emu.endpoint);
    let script = repo().join("userdata/boot.sh");

    for (digest, code) in [("0".repeat(64), 1), (sha.clone(), 0)] {
        let inst = emu.launch_one(json!({"group": name}));
        let dir = tempfile::tempdir().expect("dir");
        let bin = dir.path().join("bin/embark");
        let root = dir.path().join("www");
        let log = dir.path().join("user-data.log");
        let run = Embark::new(emu, &inst)
            .config(&format!("[release]\nroot = \"{}\"\n", root.display()))
            .env("EMBARK_BIN", &bin)
            .env("EMBARK_BINARY_URL", &url)
            .env("EMBARK_BINARY_SHA256", &digest)
            .env("EMBARK_CONSOLE", "/dev/null")
            .env("EMBARK_LOG", &log)
            .run_program("bash", &[script.to_str().expect("utf-8")]);
        assert_eq!(run.code(), code, "{}\n{}", run.stdout(), run.stderr());
        let logged = fs::read_to_string(&log).expect("log file");
        let state = emu.instance(&inst.id)["lifecycle_state"].clone();
        if code == 1 {
            assert_has(&logged, "does not have sha256");
            assert!(!bin.exists(), "a refused binary was installed");
            assert_eq!(state, "Pending:Wait");
        } else {
            assert_has(&logged, "boot done");
            let mode = fs::metadata(&bin).expect("installed").permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
            assert_eq!(state, "InService");
            let link = fs::read_link(root.join("current")).expect("current");
            assert!(root.join(link).join("index.php").is_file());
        }
    }
}

fn units(dir: &Path, enable: bool) {
    for unit in ["embark-boot.service", "embark-watch.service"] {
        fs::copy(repo().join("packer").join(unit), dir.join(unit)).expect("copy unit");
        if enable {
            let wants = dir.join("multi-user.target.wants");
            fs::create_dir_all(&wants).expect("mkdir");
            std::os::unix::fs::symlink(dir.join(unit), wants.join(unit)).expect("link");
        }
    }
}

#[test]
fn check_image_wants_units_and_no_instance_state() {
    let systemd = tempfile::tempdir().expect("systemd");
    let state = tempfile::tempdir().expect("state");
    let root = tempfile::tempdir().expect("root");
    let config = format!("[release]\nroot = \"{}\"\n", root.path().display());
    let image = |embark: Embark| {
        embark
            .config(&config)
            .env("EMBARK_STATE_DIR", state.path())
            .env("EMBARK_SYSTEMD_DIR", systemd.path())
            .run(&["check", "--image"])
    };
    // Units missing: the image could not boot by itself.
    let run = image(Embark::offline()).expect_code(1);
    assert_has(&run.stdout(), "embark-boot.service is not installed");

    units(systemd.path(), true);
    let run = image(Embark::offline()).expect_code(0);
    assert_has(&run.stdout(), "embark-boot.service installed and enabled");
    assert_has(&run.stdout(), "no instance state in the image");
    assert!(
        !run.stdout().contains("imds"),
        "check --image must not ask IMDS"
    );

    // A test boot on the builder left its status: refused.
    fs::write(
        state.path().join("status.json"),
        serde_json::to_vec(&json!({"command": "boot", "status": "done", "instance_id": "i-0builder",
            "group": null, "started": "x", "finished": null, "duration_ms": 0, "steps": [], "error": null}))
        .expect("json"),
    )
    .expect("write");
    let run = image(Embark::offline()).expect_code(1);
    assert_has(&run.stdout(), "instance state baked in");
    assert_has(&run.stdout(), "i-0builder");
}

#[test]
fn iam_policy_allows_only_what_the_configuration_uses() {
    let config = r#"
[eip]
pool = "web"
[release]
source = "s3://deploy-bucket/shop"
[notify]
error_topic = "arn:aws:sns:eu-west-1:123456789012:deploy-error"
"#;
    let policy: Value = serde_json::from_str(
        &Embark::offline()
            .config(config)
            .run(&["iam-policy", "--group", "web"])
            .expect_code(0)
            .stdout(),
    )
    .expect("JSON");
    let text = policy.to_string();
    for needle in [
        "ec2:AssociateAddress",
        r#""aws:ResourceTag/embark:pool":["web"]"#,
        "arn:aws:s3:::deploy-bucket/shop/*",
        "arn:aws:s3:::deploy-bucket/shop/ready/*",
        "autoScalingGroupName/web",
        "arn:aws:sns:eu-west-1:123456789012:deploy-error",
    ] {
        assert_has(&text, needle);
    }
    for absent in [
        "elasticfilesystem",
        "elasticloadbalancing",
        "s3:PutObject\",\"s3:GetObject",
    ] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
    // Every statement allows, names actions and resources.
    for statement in policy["Statement"].as_array().expect("statements") {
        assert_eq!(statement["Effect"], "Allow");
        assert!(statement["Action"]
            .as_array()
            .is_some_and(|a| !a.is_empty()));
        assert!(!statement["Resource"].is_null());
    }
    // The publisher's policy: no instance actions.
    let publisher = Embark::offline()
        .config(config)
        .run(&["iam-policy", "--publisher"])
        .expect_code(0)
        .stdout();
    assert_has(&publisher, "s3:PutObject");
    assert!(!publisher.contains("ec2:"), "{publisher}");
    // --publisher without a source: a usage error.
    Embark::offline()
        .run(&["iam-policy", "--publisher"])
        .expect_code(2);
}
