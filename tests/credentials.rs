//! Credentials as the AWS CLI finds them (issue 14, item 4): an `AWS_PROFILE` whose credentials come
//! from `credential_process` or from IAM Identity Center (SSO), for an operator's `release push`.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::path::Path;

const PROCESS_KEY: &str = "AKIDCREDENTIALPROCESS";

/// A workstation whose only credentials are the profile `name` in `config` (no keys in the
/// environment, a home of its own).
fn with_profile(emu: &Emulator, home: &Path, name: &str, config: &str) -> Embark {
    let file = home.join(".aws/config");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir .aws");
    std::fs::write(&file, config).expect("write the AWS config");
    emu.workstation()
        .without("AWS_ACCESS_KEY_ID")
        .without("AWS_SECRET_ACCESS_KEY")
        .env("HOME", home)
        .env("AWS_PROFILE", name)
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tree");
    std::fs::write(dir.path().join("index.php"), "<?php echo 1;").expect("write");
    dir
}

/// The access keys the requests to `bucket` were signed with.
fn signers(emu: &Emulator, bucket: &str) -> std::collections::BTreeSet<String> {
    let prefix = format!("/{bucket}");
    emu.requests()
        .iter()
        .filter(|r| {
            r["service"] == "s3" && r["path"].as_str().is_some_and(|p| p.starts_with(&prefix))
        })
        .filter_map(|r| r["access_key"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_profile_with_credential_process_pushes_a_release() {
    let emu = emulator();
    let src = emu.source("credproc");
    let home = tempfile::tempdir().expect("home");
    let script = home.path().join("credentials.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho '{}'\n",
            json!({"Version": 1, "AccessKeyId": PROCESS_KEY, "SecretAccessKey": "process-secret"})
        ),
    )
    .expect("write the credential process");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let config = format!("[profile ci]\ncredential_process = {}\n", script.display());
    let tree = tree();
    let run = with_profile(emu, home.path(), "ci", &config).run(&[
        "release",
        "push",
        tree.path().to_str().expect("utf-8"),
        "--to",
        &src.url,
    ]);
    run.expect_code(0);
    let keys = signers(emu, &src.bucket);
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        vec![PROCESS_KEY.to_string()]
    );
}

#[test]
fn a_failing_credential_process_is_named_and_nothing_is_written() {
    let emu = emulator();
    let src = emu.source("credfail");
    let home = tempfile::tempdir().expect("home");
    let config = "[profile ci]\ncredential_process = /bin/false\n";
    let tree = tree();
    let run = with_profile(emu, home.path(), "ci", config).run(&[
        "release",
        "push",
        tree.path().to_str().expect("utf-8"),
        "--to",
        &src.url,
    ]);
    assert_ne!(run.code(), 0);
    assert_has(&run.stderr(), "could not load AWS credentials");
    assert_has(&run.stderr(), "external process exited");
    assert!(
        emu.s3_keys(&src.bucket).is_empty(),
        "{:?}",
        emu.s3_keys(&src.bucket)
    );
}

fn sha1_hex(text: &str) -> String {
    let mut child = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha1sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha1sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// A signed-in SSO user: the token the AWS CLI's `aws sso login` leaves in `~/.aws/sso/cache`.
fn sso_profile(home: &Path, token: &str) -> String {
    let start_url = "https://embark-test.awsapps.com/start";
    let cache = home.join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).expect("mkdir cache");
    std::fs::write(
        cache.join(format!("{}.json", sha1_hex(start_url))),
        json!({"startUrl": start_url, "region": "eu-west-1", "accessToken": token,
               "expiresAt": "2099-01-01T00:00:00Z"})
        .to_string(),
    )
    .expect("write the token");
    format!(
        "[profile sso]\nsso_start_url = {start_url}\nsso_region = eu-west-1\n\
         sso_account_id = 123456789012\nsso_role_name = Publisher\nregion = eu-west-1\n"
    )
}

#[test]
fn a_profile_signed_in_with_sso_pushes_a_release() {
    let emu = emulator();
    let src = emu.source("sso");
    let token = unique("sso-token");
    emu.control(
        "POST",
        "sso",
        json!({"token": token, "account_id": "123456789012", "role_name": "Publisher"}),
    );
    let home = tempfile::tempdir().expect("home");
    let config = sso_profile(home.path(), &token);
    let tree = tree();
    with_profile(emu, home.path(), "sso", &config)
        .run(&[
            "release",
            "push",
            tree.path().to_str().expect("utf-8"),
            "--to",
            &src.url,
        ])
        .expect_code(0);
    let portal: Vec<_> = emu
        .requests_of("GetRoleCredentials")
        .into_iter()
        .filter(|r| r["query"].as_str().is_some_and(|q| q.contains("Publisher")))
        .collect();
    assert!(portal.iter().any(|r| r["status"] == 200), "{portal:?}");
    // Every S3 call was signed with the portal's short-term credentials.
    let keys = signers(emu, &src.bucket);
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.starts_with("ASIA")), "{keys:?}");
}

#[test]
fn an_sso_session_the_portal_does_not_know_fails_before_anything_is_written() {
    let emu = emulator();
    let src = emu.source("ssoexp");
    let home = tempfile::tempdir().expect("home");
    let config = sso_profile(home.path(), &unique("signed-out"));
    let tree = tree();
    let run = with_profile(emu, home.path(), "sso", &config).run(&[
        "release",
        "push",
        tree.path().to_str().expect("utf-8"),
        "--to",
        &src.url,
    ]);
    assert_ne!(run.code(), 0);
    assert_has(&run.stderr(), "could not load AWS credentials");
    assert_has(&run.stderr(), "Session token not found or invalid");
    assert_has(&run.stderr(), "aws sso login");
    assert!(emu.s3_keys(&src.bucket).is_empty());
}
