//! Signed releases (issue 19): whoever can write the bucket still cannot run code on the fleet.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// An ed25519 key pair as `openssl` writes it: (private PKCS#8 PEM, public SPKI PEM).
fn file_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("openssl genpkey")
        .success();
    assert!(ok, "openssl genpkey");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl pkey")
        .success();
    assert!(ok, "openssl pkey -pubout");
    (private, public)
}

fn tree(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tree");
    std::fs::create_dir_all(dir.path().join("public")).expect("mkdir");
    std::fs::write(dir.path().join("public/index.php"), body).expect("write");
    dir
}

/// `release push` of a one-file tree, signed with `sign` when given; the run.
fn push(emu: &Emulator, src: &Source, body: &str, sign: Option<&str>) -> Run {
    let tree = tree(body);
    let mut args = vec![
        "release",
        "push",
        tree.path().to_str().expect("utf-8"),
        "--to",
        &src.url,
    ];
    if let Some(key) = sign {
        args.extend(["--sign", key]);
    }
    emu.workstation().run(&args)
}

fn pushed(run: Run) -> String {
    let run = run.expect_code(0);
    run.stdout()
        .split_whitespace()
        .nth(2)
        .expect("release id")
        .to_string()
}

/// `[release]` lines trusting `keys` (paths or inline PEM), signatures required.
fn trusting(root: &Path, keys: &[String]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("'''{k}'''")).collect();
    format!(
        "[release]\nroot = \"{}\"\ntrusted_keys = [{}]\nrequire_signature = true\n",
        root.display(),
        keys.join(", ")
    )
}

fn on(emu: &Emulator, inst: &Instance, config: &str) -> Embark {
    Embark::new(emu, inst).config(config)
}

fn instance(emu: &Emulator, src: &Source) -> Instance {
    emu.launch_one(json!({"tags": {"embark:release": src.url}}))
}

fn pointer(emu: &Emulator, src: &Source) -> Value {
    serde_json::from_slice(&emu.s3_get(&src.bucket, "app/current")).expect("pointer")
}

fn set_pointer(emu: &Emulator, src: &Source, pointer: &Value) {
    emu.s3_put(
        &src.bucket,
        "app/current",
        serde_json::to_vec_pretty(pointer).expect("json"),
    );
}

#[test]
fn a_release_signed_with_a_file_key_is_verified_on_pull_and_by_release_verify() {
    let emu = emulator();
    let keys = tempfile::tempdir().expect("keys");
    let (private, public) = file_key(keys.path(), "release");
    let src = emu.source("signfile");
    let v1 = pushed(push(emu, &src, "<?php echo 1;", private.to_str()));
    let sig: Value = serde_json::from_slice(
        &emu.s3_get(&src.bucket, &format!("app/releases/{v1}/manifest.sig")),
    )
    .expect("manifest.sig");
    assert_eq!(sig["algorithm"], "ED25519");
    assert_eq!(pointer(emu, &src)["signature"], sig, "the pointer names it");

    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &src);
    let config = trusting(root.path(), &[public.display().to_string()]);
    on(emu, &inst, &config)
        .run(&["release", "pull"])
        .expect_code(0);
    assert_eq!(current_release(root.path()).as_deref(), Some(v1.as_str()));

    let verify = emu
        .workstation()
        .config(&config)
        .run(&["release", "verify", "--from", &src.url])
        .expect_code(0);
    assert_has(&verify.stdout(), &format!("release {v1}"));
    assert_has(&verify.stdout(), "manifest verified (1 files)");
    emu.workstation()
        .config(&config)
        .run(&["release", "verify", "--from", &src.url, &v1])
        .expect_code(0);
}

#[test]
fn a_release_signed_with_a_kms_key_is_verified_with_its_public_key_only() {
    let emu = emulator();
    let alias = unique("signing");
    let key = emu.control("POST", "kms", json!({"alias": alias}));
    let pem = key["public_key_pem"].as_str().expect("pem").to_string();
    let src = emu.source("signkms");
    let v1 = pushed(push(
        emu,
        &src,
        "<?php echo 1;",
        Some(&format!("kms:alias/{alias}")),
    ));
    let sig = &pointer(emu, &src)["signature"];
    assert_eq!(sig["algorithm"], "ECDSA_SHA_256");
    assert_eq!(sig["signer"], key["arn"]);

    // The instance has no KMS permission at all: it verifies with the public key it was given.
    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &src);
    let before = emu.requests_of("GetPublicKey").len();
    on(emu, &inst, &trusting(root.path(), &[pem]))
        .run(&["release", "pull"])
        .expect_code(0);
    assert_eq!(current_release(root.path()).as_deref(), Some(v1.as_str()));
    assert_eq!(emu.requests_of("GetPublicKey").len(), before);
}

#[test]
fn unsigned_unknown_key_bad_signature_and_a_signature_of_another_release_are_refused() {
    let emu = emulator();
    let keys = tempfile::tempdir().expect("keys");
    let (trusted, trusted_pub) = file_key(keys.path(), "trusted");
    let (stranger, _) = file_key(keys.path(), "stranger");
    let src = emu.source("signbad");
    let v1 = pushed(push(emu, &src, "<?php echo 1;", trusted.to_str()));
    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &src);
    let config = trusting(root.path(), &[trusted_pub.display().to_string()]);
    on(emu, &inst, &config)
        .run(&["release", "pull"])
        .expect_code(0);
    let v1_pointer = pointer(emu, &src);

    let refused = |why: &str| {
        let run = on(emu, &inst, &config).run(&["release", "pull"]);
        assert_eq!(run.code(), 1, "{}", run.stderr());
        assert_has(&run.stderr(), why);
        assert_has(&run.stderr(), "current is untouched");
        assert_eq!(current_release(root.path()).as_deref(), Some(v1.as_str()));
    };

    let unsigned = pushed(push(emu, &src, "<?php echo 2;", None));
    refused(&format!("refusing release {unsigned}"));
    refused("it is not signed, and [release] require_signature is on");

    pushed(push(emu, &src, "<?php echo 3;", stranger.to_str()));
    refused("which is not among the 1 trusted keys");

    let v4 = pushed(push(emu, &src, "<?php echo 4;", trusted.to_str()));
    let mut bad = pointer(emu, &src);
    let value = bad["signature"]["value"]
        .as_str()
        .expect("value")
        .to_string();
    let flipped = if value.starts_with('A') { "B" } else { "A" };
    bad["signature"]["value"] = json!(format!("{flipped}{}", &value[1..]));
    set_pointer(emu, &src, &bad);
    refused("does not verify");

    // v1's good signature on v4's pointer: signed for another release.
    let mut copied = pointer(emu, &src);
    copied["signature"] = v1_pointer["signature"].clone();
    set_pointer(emu, &src, &copied);
    refused(&format!("refusing release {v4}"));
    refused("made for another release or prefix");
}

#[test]
fn a_signature_copied_to_another_prefix_is_refused() {
    let emu = emulator();
    let keys = tempfile::tempdir().expect("keys");
    let (private, public) = file_key(keys.path(), "release");
    let src = emu.source("signprefix");
    let v1 = pushed(push(emu, &src, "<?php echo 1;", private.to_str()));
    // The same release, object for object, under another prefix of the bucket.
    for key in emu.s3_keys(&src.bucket) {
        let body = emu.s3_get(&src.bucket, &key);
        emu.s3_put(&src.bucket, &key.replacen("app/", "other/", 1), body);
    }
    let other = Source {
        bucket: src.bucket.clone(),
        url: format!("s3://{}/other", src.bucket),
    };
    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &other);
    let run = on(
        emu,
        &inst,
        &trusting(root.path(), &[public.display().to_string()]),
    )
    .run(&["release", "pull"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_has(
        &run.stderr(),
        &format!("refusing release {v1} from {}", other.url),
    );
    assert_has(&run.stderr(), "made for another release or prefix");
    assert!(current_release(root.path()).is_none());
}

#[test]
fn rotation_trusts_old_and_new_then_refuses_the_old_keys_releases_and_rollbacks_to_them() {
    let emu = emulator();
    let keys = tempfile::tempdir().expect("keys");
    let (old, old_pub) = file_key(keys.path(), "old");
    let (new, new_pub) = file_key(keys.path(), "new");
    let src = emu.source("signrot");
    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &src);
    let both = trusting(
        root.path(),
        &[old_pub.display().to_string(), new_pub.display().to_string()],
    );
    let only_new = trusting(root.path(), &[new_pub.display().to_string()]);

    let v1 = pushed(push(emu, &src, "<?php echo 1;", old.to_str()));
    on(emu, &inst, &both)
        .run(&["release", "pull"])
        .expect_code(0);
    let v2 = pushed(push(emu, &src, "<?php echo 2;", new.to_str()));
    on(emu, &inst, &both)
        .run(&["release", "pull"])
        .expect_code(0);
    assert_eq!(current_release(root.path()).as_deref(), Some(v2.as_str()));

    // The old key is retired: a rollback to its release is refused before the pointer moves.
    let run = emu
        .workstation()
        .config(&only_new)
        .run(&["release", "rollback", "--from", &src.url]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_has(&run.stderr(), &format!("refusing release {v1}"));
    assert_has(&run.stderr(), "cannot be installed or rolled back to");
    assert_eq!(pointer(emu, &src)["release"], v2.as_str());

    // Rolled back by someone who still trusts it: the instances that do not refuse it.
    emu.workstation()
        .config(&both)
        .run(&["release", "rollback", "--from", &src.url])
        .expect_code(0);
    assert_eq!(
        pointer(emu, &src)["signature"]["key_id"]
            .as_str()
            .map(|s| s.len()),
        Some(71)
    );
    let run = on(emu, &inst, &only_new).run(&["release", "pull"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_eq!(current_release(root.path()).as_deref(), Some(v2.as_str()));
    on(emu, &inst, &both)
        .run(&["release", "pull"])
        .expect_code(0);
    assert_eq!(current_release(root.path()).as_deref(), Some(v1.as_str()));
}

#[test]
fn the_agent_refuses_a_bad_release_once_and_keeps_serving_the_current_one() {
    let emu = emulator();
    let keys = tempfile::tempdir().expect("keys");
    let (private, public) = file_key(keys.path(), "release");
    let seed =
        emu.seed(json!({"name": unique("signagent"), "pool_size": 1, "lifecycle_hook": false}));
    let error_topic = seed["topics"]["error"]["topic_arn"]
        .as_str()
        .expect("topic");
    let queue = seed["topics"]["error"]["queue_url"]
        .as_str()
        .expect("queue");
    let src = emu.source("signagent");
    let v1 = pushed(push(emu, &src, "<?php echo 1;", private.to_str()));
    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &src);
    let config = format!(
        "{}\n[watch]\ninterval = \"1s\"\n\n[notify]\nerror_topic = \"{error_topic}\"\n",
        trusting(root.path(), &[public.display().to_string()])
    );
    let agent = on(emu, &inst, &config).spawn(&["release", "watch"]);
    let switched = wait_until(Duration::from_secs(30), || {
        current_release(root.path()).as_deref() == Some(v1.as_str())
    });
    let bad = pushed(push(emu, &src, "<?php echo 'evil';", None));
    // Several polls go by with the bad release current at the source.
    std::thread::sleep(Duration::from_secs(5));
    let v3 = pushed(push(emu, &src, "<?php echo 3;", private.to_str()));
    let recovered = wait_until(Duration::from_secs(30), || {
        current_release(root.path()).as_deref() == Some(v3.as_str())
    });
    agent.terminate();
    let run = agent.wait();
    assert!(switched && recovered, "{}", run.stderr());
    let messages = match emu.control("GET", &format!("messages?queue_url={queue}"), json!({})) {
        Value::Array(v) => v,
        other => panic!("messages: {other}"),
    };
    let about_bad: Vec<&Value> = messages
        .iter()
        .filter(|m| m["message"].as_str().is_some_and(|t| t.contains(&bad)))
        .collect();
    assert_eq!(about_bad.len(), 1, "{messages:?}");
    assert_has(
        about_bad[0]["message"].as_str().unwrap_or_default(),
        "it is not signed",
    );
    assert!(!root.path().join(format!("releases/{bad}")).exists());
}

#[test]
fn bad_signing_input_changes_nothing() {
    let emu = emulator();
    let src = emu.source("signinput");
    let keys = tempfile::tempdir().expect("keys");
    let not_a_key = keys.path().join("nope.pem");
    std::fs::write(&not_a_key, "hello").expect("write");
    let run = push(emu, &src, "<?php", not_a_key.to_str());
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert_has(&run.stderr(), "not an ed25519 private key in PKCS#8 PEM");
    let run = push(emu, &src, "<?php", Some("kms:alias/does-not-exist"));
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_has(&run.stderr(), "kms:GetPublicKey");
    assert!(
        emu.s3_keys(&src.bucket).is_empty(),
        "{:?}",
        emu.s3_keys(&src.bucket)
    );

    // A trusted key that is not a public key, and require_signature without keys: exit 2.
    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &src);
    let run = on(
        emu,
        &inst,
        &trusting(root.path(), &[not_a_key.display().to_string()]),
    )
    .run(&["release", "pull"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert_has(&run.stderr(), "trusted_keys");
    let run = on(
        emu,
        &inst,
        &format!(
            "[release]\nroot = \"{}\"\nrequire_signature = true\n",
            root.path().display()
        ),
    )
    .run(&["release", "pull"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert_has(&run.stderr(), "needs [release] trusted_keys");

    // `release verify`: an unsigned release is refused (exit 1); no trusted keys to verify with: exit 2.
    pushed(push(emu, &src, "<?php", None));
    let (_, public) = file_key(keys.path(), "verify");
    let run = emu
        .workstation()
        .config(&trusting(root.path(), &[public.display().to_string()]))
        .run(&["release", "verify", "--from", &src.url]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_has(&run.stderr(), "it is not signed");
    let run = emu
        .workstation()
        .run(&["release", "verify", "--from", &src.url]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert_has(&run.stderr(), "no trusted keys to verify with");
}

#[test]
fn check_warns_while_releases_are_not_verified() {
    let emu = emulator();
    let src = emu.source("signcheck");
    pushed(push(emu, &src, "<?php", None));
    let root = tempfile::tempdir().expect("root");
    let inst = instance(emu, &src);
    let run = on(
        emu,
        &inst,
        &format!("[release]\nroot = \"{}\"\n", root.path().display()),
    )
    .run(&["check"]);
    assert_has(&run.stdout(), "WARN signing    releases are not verified");
}
