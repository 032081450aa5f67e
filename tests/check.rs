//! `embark check`: one line per check, exit 0 only when a boot could succeed here.

mod common;

use common::{assert_has, emulator, unique, Embark};
use serde_json::json;

#[test]
fn healthy_instance_passes_every_check() {
    let emu = emulator();
    let group = unique("chk");
    emu.seed(json!({"name": group}));
    let inst = emu.launch_one(json!({"group": group}));
    let run = Embark::new(emu, &inst).run(&["check"]).expect_code(0);
    let out = run.stdout();
    for name in ["config", "imds", "tags", "state_dir"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(name)),
            "{name} not ok: {out}"
        );
    }
    assert!(out.contains(&format!("group {group}")), "{out}");
}

#[test]
fn unwritable_state_dir_fails_its_line() {
    let emu = emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    // Nothing to configure on this instance, said explicitly (else the boot line fails too).
    let embark = Embark::new(emu, &inst).config("[boot]\nrequire = []\n");
    let file = embark.state_dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let run = embark
        .env("EMBARK_STATE_DIR", &file)
        .run(&["check"])
        .expect_code(1);
    let out = run.stdout();
    assert!(
        out.lines().any(|l| l.starts_with("FAIL")
            && l.contains("state_dir")
            && l.contains("not a directory")),
        "{out}"
    );
    // The other checks still ran.
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("imds")),
        "{out}"
    );
}

#[test]
fn unreachable_imds_fails_its_line() {
    let run = Embark::offline()
        .config("imds_deadline = \"1s\"\n")
        .run(&["check"])
        .expect_code(1);
    let out = run.stdout();
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("imds")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("config")),
        "{out}"
    );
}

#[test]
fn malformed_group_tag_is_a_configuration_error() {
    let emu = emulator();
    let group = unique("chkbad");
    emu.seed(json!({"name": group, "group_tags": {"embark:eip-wait": "soon"}}));
    let inst = emu.launch_one(json!({"group": group}));
    let run = Embark::new(emu, &inst).run(&["check"]).expect_code(2);
    let out = run.stdout();
    assert!(
        out.lines().any(|l| l.starts_with("FAIL")
            && l.contains("embark:eip-wait")
            && l.contains("not a duration")),
        "{out}"
    );
}

#[test]
fn unknown_embark_tag_is_named_with_nearest() {
    let emu = emulator();
    let group = unique("chktypo");
    emu.seed(json!({"name": group, "group_tags": {"embark:eip-reserv": "2"}}));
    let inst = emu.launch_one(json!({"group": group}));
    let run = Embark::new(emu, &inst).run(&["check"]).expect_code(2);
    assert_has(&run.stdout(), "did you mean embark:eip-reserve");
}

#[test]
fn bad_config_file_fails_with_exit_2() {
    let run = Embark::offline()
        .config("[eip]\nrequired = maybe\n")
        .run(&["check"])
        .expect_code(2);
    assert!(
        run.stdout()
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("config")),
        "{}",
        run.stdout()
    );
}

#[test]
fn the_release_line_says_what_is_current_or_that_nothing_was_published() {
    let emu = emulator();
    let bucket = unique("chkrel");
    emu.bucket(&bucket);
    let source = format!("s3://{bucket}/app");
    let inst = emu.launch_one(json!({"tags": {"embark:release": source}}));
    let run = Embark::new(emu, &inst).run(&["check"]).expect_code(1);
    assert!(
        run.stdout().lines().any(|l| l.starts_with("FAIL")
            && l.contains("release")
            && l.contains("no release has been published")),
        "{}",
        run.stdout()
    );
    let id = emu.push_files(&source, &[("index.php", "<?php")]);
    let run = Embark::new(emu, &inst).run(&["check"]).expect_code(0);
    assert_has(&run.stdout(), &format!("{id} is current at {source}"));
}

#[test]
fn an_instance_with_nothing_to_do_fails_the_boot_line() {
    let emu = emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    let run = Embark::new(emu, &inst).run(&["check"]).expect_code(2);
    assert!(
        run.stdout()
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("boot") && l.contains("nothing to do")),
        "{}",
        run.stdout()
    );
    let run = Embark::new(emu, &inst)
        .config("[boot]\nrequire = []\n")
        .run(&["check"])
        .expect_code(0);
    assert_has(&run.stdout(), "nothing required");
}
