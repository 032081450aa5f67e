//! What an operator meets first (issue 15): help with examples, completions, the man page, the example
//! configuration, `--version`, JSON logs that parse line by line, and the release archive.

mod common;

use std::process::Command;

use common::Embark;
use serde_json::{json, Value};

fn embark(args: &[&str]) -> std::process::Output {
    Command::new(common::binary())
        .args(args)
        .env_clear()
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run embark")
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_example_configuration_parses() {
    let text = stdout(&embark(&["config", "example"]));
    assert!(
        text.contains("[release]") && text.contains("[[release.hooks]]"),
        "{text}"
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("embark.toml");
    std::fs::write(&path, &text).expect("write");
    // iam-policy reads and validates the whole file, and needs no instance.
    let policy: Value = serde_json::from_str(&stdout(&embark(&[
        "--config",
        path.to_str().expect("utf-8"),
        "iam-policy",
    ])))
    .expect("policy JSON");
    let text = policy.to_string();
    for needle in [
        "ec2:AssociateAddress",
        "elasticfilesystem:DescribeMountTargets",
        "s3:GetObject",
        "sns:Publish",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let text = stdout(&embark(&["completions", shell]));
        for word in ["boot", "release", "rollback", "plan-step"] {
            assert!(text.contains(word), "{shell} lacks {word}");
        }
    }
    let man = stdout(&embark(&["man"]));
    assert!(man.contains(".TH embark"), "{man}");
    assert!(man.contains("boot"), "{man}");
    // Every page embark(1) names is written by `man --dir`, each with its options and examples.
    let dir = tempfile::tempdir().expect("dir");
    embark(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    let named: Vec<String> = man
        .split("embark\\-")
        .skip(1)
        .filter_map(|rest| rest.split_once("(1)").map(|(name, _)| name))
        .map(|name| name.replace("\\-", "-"))
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(|name| format!("embark-{name}.1"))
        .collect();
    assert!(named.contains(&"embark-boot.1".to_string()), "{named:?}");
    for page in &named {
        assert!(
            dir.path().join(page).is_file(),
            "{page} is named but not written"
        );
    }
    let pull = std::fs::read_to_string(dir.path().join("embark-release-pull.1")).expect("page");
    assert!(pull.contains("retry\\-failed"), "{pull}");
    assert!(
        std::fs::read_to_string(dir.path().join("embark-release-watch.1"))
            .expect("page")
            .contains("EXAMPLES"),
        "release watch has examples"
    );
    let bad = embark(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn every_command_has_examples_and_boot_comes_first() {
    let top = stdout(&embark(&["--help"]));
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands.first(), Some(&"boot"), "{top}");
    assert!(top.contains("Global options:"), "{top}");
    for cmd in [
        vec!["boot"],
        vec!["check"],
        vec!["identity"],
        vec!["health"],
        vec!["status"],
        vec!["iam-policy"],
        vec!["eip", "bind"],
        vec!["efs", "mount"],
        vec!["release", "push"],
        vec!["release", "pull"],
        vec!["release", "list"],
        vec!["release", "rollback"],
        vec!["release", "verify"],
        vec!["config", "example"],
        vec!["completions"],
        vec!["release", "watch"],
        vec!["man"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let text = stdout(&embark(&args));
        assert!(
            text.contains("EXAMPLES:"),
            "{cmd:?} --help has no examples:\n{text}"
        );
        assert!(
            !text.contains("docs/"),
            "{cmd:?} --help names a repository path:\n{text}"
        );
    }
}

#[test]
fn version_names_the_commit() {
    let text = stdout(&embark(&["--version"]));
    assert!(text.starts_with("embark 0."), "{text}");
    assert!(text.contains("(commit "), "{text}");
}

#[test]
fn a_usage_error_with_json_logs_is_one_json_line() {
    let run = Embark::offline()
        .run(&["--log-format", "json", "release", "pull", "--no-such-flag"])
        .expect_code(2);
    let err = run.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    let value: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(value["exit_code"], json!(2), "{value}");
    assert!(
        value["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--no-such-flag"),
        "{value}"
    );
    // For people, clap's own words, unchanged.
    let run = Embark::offline()
        .run(&["release", "pull", "--no-such-flag"])
        .expect_code(2);
    assert!(run.stderr().contains("Usage:"), "{}", run.stderr());
}

#[test]
fn json_logs_are_json_on_every_line_the_final_error_included() {
    let run = Embark::offline()
        .config("imds_deadline = \"5s\"\n")
        .run(&["--log-format", "json", "identity"])
        .expect_code(1);
    let err = run.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
    let last: Value = serde_json::from_str(lines[lines.len() - 1]).expect("json");
    assert_eq!(last["final_error"], json!(true), "{last}");
    assert_eq!(last["exit_code"], json!(1), "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .contains("IMDS"),
        "{last}"
    );
    // The waits in between said what they waited for.
    assert!(err.contains("waiting for IMDS at"), "{err}");
}

#[test]
fn human_lines_carry_a_timestamp_when_not_on_a_terminal() {
    let run = Embark::offline()
        .config("imds_deadline = \"5s\"\n")
        .run(&["identity"])
        .expect_code(1);
    let err = run.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("waiting for IMDS at"))
        .unwrap_or_else(|| panic!("no wait logged: {err}"));
    // RFC 3339 first: 2026-11-27T07:40:09.123456Z
    let b = line.as_bytes();
    assert!(b.len() > 20 && b[4] == b'-' && b[10] == b'T', "{line}");
}

#[test]
fn the_release_archive_has_the_binary_its_docs_and_checksums() {
    let out = tempfile::tempdir().expect("out");
    let run = Command::new(common::repo().join("scripts/dist.sh"))
        .args([
            common::binary().to_str().expect("utf-8 path"),
            out.path().to_str().expect("utf-8"),
            "x86_64",
        ])
        .output()
        .expect("dist.sh");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).expect("SHA256SUMS");
    let archive = sums
        .split_whitespace()
        .nth(1)
        .expect("archive name")
        .to_string();
    assert!(
        archive.starts_with("embark-0.") && archive.ends_with("-x86_64.tar.gz"),
        "{sums}"
    );
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(out.path())
        .output()
        .expect("sha256sum");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let list = Command::new("tar")
        .args(["-tzf", &archive])
        .current_dir(out.path())
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&list.stdout).to_string();
    for want in [
        "/embark",
        "/embark.1",
        "/completions/embark.bash",
        "/embark.example.toml",
        "/systemd/embark-boot.service",
        "/CHANGELOG.md",
    ] {
        assert!(
            names.lines().any(|n| n.ends_with(want)),
            "{want} missing: {names}"
        );
    }
}

#[test]
fn json_lines_carry_the_step_and_the_instance_at_the_top_level() {
    let emu = common::emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    let run = Embark::new(emu, &inst)
        .config("[boot]\nrequire = []\n")
        .run(&["--log-format", "json", "-v", "boot"])
        .expect_code(0);
    let err = run.stderr();
    let lines: Vec<Value> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let in_steps: Vec<&Value> = lines.iter().filter(|l| l.get("step").is_some()).collect();
    assert!(!in_steps.is_empty(), "{err}");
    for line in &in_steps {
        assert_eq!(line["instance_id"], json!(inst.id), "{line}");
    }
    assert!(lines.iter().all(|l| l.get("spans").is_none()), "{err}");
}

/// An SSE-KMS release bucket (issue 14, item 9): the key's statement, and an alias refused.
#[test]
fn iam_policy_takes_a_kms_key_arn_and_refuses_an_alias() {
    let key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    for extra in [&[][..], &["--publisher"][..]] {
        let mut args = vec![
            "--config",
            "/dev/null",
            "iam-policy",
            "--release",
            "s3://my-deploy-bucket/app",
            "--kms-key",
            key,
        ];
        args.extend_from_slice(extra);
        let policy: Value = serde_json::from_str(&stdout(&embark(&args))).expect("policy JSON");
        let kms = policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .find(|s| s["Sid"] == "ReleaseKms")
            .cloned()
            .unwrap_or_else(|| panic!("{extra:?}: no ReleaseKms in {policy}"));
        assert_eq!(kms["Resource"], json!([key]));
    }
    let alias = embark(&[
        "--config",
        "/dev/null",
        "iam-policy",
        "--kms-key",
        "arn:aws:kms:eu-west-1:123456789012:alias/deploy",
    ]);
    assert_eq!(alias.status.code(), Some(2));
    let err = String::from_utf8_lossy(&alias.stderr);
    assert!(err.contains("is not a KMS key ARN"), "{err}");
    assert!(alias.stdout.is_empty());
}
