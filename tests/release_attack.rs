//! Release pull under attack (issue 13): releases crafted directly in S3, as whoever can write the
//! bucket would; one test per finding, each against the real binary.

mod common;

use std::fs;
use std::path::Path;

use common::{
    assert_has, current_release, emulator, pull, unique, Embark, Emulator, Instance, Source,
};
use embark::release::format::sha256_hex;
use serde_json::{json, Value};

fn source(emu: &Emulator) -> Source {
    emu.source("atk")
}

fn instance(emu: &Emulator, src: &Source) -> Instance {
    emu.launch_one(json!({"tags": {"embark:release": src.url, "embark:role": "web"}}))
}

fn push(emu: &Emulator, dir: &Path, src: &Source) -> String {
    emu.push_dir(dir, &src.url, None)
}

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tree");
    for (path, body) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, body).expect("write");
    }
    dir
}

fn manifest(emu: &Emulator, src: &Source, id: &str) -> Value {
    serde_json::from_slice(&emu.s3_get(&src.bucket, &format!("app/releases/{id}/manifest.json")))
        .expect("manifest")
}

/// Replace the release's manifest and point the pointer at it (what a bucket writer can do).
fn tamper_manifest(emu: &Emulator, src: &Source, id: &str, manifest: &Value) {
    let bytes = serde_json::to_vec(manifest).expect("json");
    let mut pointer: Value =
        serde_json::from_slice(&emu.s3_get(&src.bucket, "app/current")).expect("pointer");
    pointer["manifest_sha256"] = json!(sha256_hex(&bytes));
    emu.s3_put(
        &src.bucket,
        &format!("app/releases/{id}/manifest.json"),
        bytes,
    );
    emu.s3_put(
        &src.bucket,
        "app/current",
        serde_json::to_vec(&pointer).expect("json"),
    );
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = fs::symlink_metadata(entry.path()).expect("meta");
        if meta.is_dir() {
            total += disk_bytes(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// A release whose bundle is `bundle` (raw tar, compressed here) and whose manifest lists one file.
fn with_bundle(emu: &Emulator, src: &Source, raw_tar: Vec<u8>) -> String {
    let files = tree(&[("a.php", "<?php")]);
    let id = push(emu, files.path(), src);
    let compressed = zstd::encode_all(&raw_tar[..], 3).expect("zstd");
    emu.s3_put(
        &src.bucket,
        &format!("app/releases/{id}/bundle.tar.zst"),
        compressed,
    );
    id
}

fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h
}

#[test]
fn finding_1_a_symlink_chain_out_of_the_release_is_refused() {
    let emu = emulator();
    let src = source(emu);
    let files = tree(&[("a.php", "<?php")]);
    let id = push(emu, files.path(), &src);
    let mut m = manifest(emu, &src, &id);
    let entries = m["entries"].as_array_mut().expect("entries");
    entries.push(json!({"path": "l1", "type": "symlink", "target": "."}));
    entries.push(json!({"path": "zz-etc", "type": "symlink",
                        "target": format!("l1/{}etc", "../".repeat(30))}));
    tamper_manifest(emu, &src, &id, &m);
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(&run.stderr(), "through the release's own symlink 'l1'");
    assert_eq!(current_release(root.path()), None);
    assert!(!root.path().join("releases").join(&id).exists());
}

#[test]
fn finding_2_a_pax_size_beyond_the_manifest_writes_nothing_beyond_it() {
    let emu = emulator();
    let src = source(emu);
    // Header says 5 bytes, a PAX record says 64 MiB, and 64 MiB follow (they compress to little).
    let record = b"17 size=67108864\n";
    let mut raw = Vec::new();
    raw.extend_from_slice(
        header("PaxHeader", tar::EntryType::XHeader, record.len() as u64).as_bytes(),
    );
    raw.extend_from_slice(record);
    raw.extend(std::iter::repeat_n(0u8, 512 - record.len()));
    raw.extend_from_slice(header("a.php", tar::EntryType::Regular, 5).as_bytes());
    raw.extend(std::iter::repeat_n(b'A', 64 << 20));
    raw.extend_from_slice(&[0u8; 1024]);
    with_bundle(emu, &src, raw);
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(&run.stderr(), "more than the 5 bytes the manifest promises");
    assert!(
        disk_bytes(root.path()) < 64 << 10,
        "{} bytes written",
        disk_bytes(root.path())
    );
    assert_eq!(current_release(root.path()), None);
}

#[test]
fn finding_3_a_huge_extension_record_is_refused_from_its_header() {
    let emu = emulator();
    let src = source(emu);
    let mut raw = Vec::new();
    raw.extend_from_slice(header("././@LongLink", tar::EntryType::GNULongName, 1 << 30).as_bytes());
    raw.extend(std::iter::repeat_n(b'a', 1 << 20));
    with_bundle(emu, &src, raw);
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(&run.stderr(), "an extension record of 1073741824 bytes");
    assert_eq!(current_release(root.path()), None);
}

#[test]
fn finding_4_a_local_release_with_the_same_id_but_other_content_is_fetched_again() {
    let emu = emulator();
    let src = source(emu);
    let files = tree(&[("a.php", "<?php echo 1;")]);
    let id = push(emu, files.path(), &src);
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "").expect_code(0);
    let local = root.path().join("releases").join(&id).join("a.php");
    fs::write(&local, "<?php system($_GET['c']);").expect("tamper");
    let run = pull(emu, &inst, root.path(), "").expect_code(0);
    assert_has(&run.stderr(), "cannot be used");
    assert_eq!(fs::read_to_string(&local).expect("read"), "<?php echo 1;");
    assert_eq!(current_release(root.path()).as_deref(), Some(id.as_str()));
}

#[test]
fn finding_5a_a_half_pruned_release_is_fetched_again_before_a_rollback_switches_to_it() {
    let emu = emulator();
    let src = source(emu);
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    let v1 = push(emu, tree(&[("a.php", "v1"), ("b.php", "v1")]).path(), &src);
    pull(emu, &inst, root.path(), "").expect_code(0);
    let v2 = push(emu, tree(&[("a.php", "v2")]).path(), &src);
    pull(emu, &inst, root.path(), "").expect_code(0);
    // A kill in the middle of deleting v1 (the old prune order): files gone, manifest copy kept.
    fs::remove_file(root.path().join("releases").join(&v1).join("b.php")).expect("rm");
    emu.workstation()
        .run(&["release", "rollback", "--to", &v1, "--from", &src.url])
        .expect_code(0);
    pull(emu, &inst, root.path(), "").expect_code(0);
    assert_eq!(current_release(root.path()).as_deref(), Some(v1.as_str()));
    let b = root.path().join("releases").join(&v1).join("b.php");
    assert_eq!(fs::read_to_string(b).expect("b.php is back"), "v1");
    assert_ne!(v1, v2);
}

#[test]
fn finding_5b_hooks_due_after_an_interrupted_switch_run_on_the_next_pull() {
    let emu = emulator();
    let src = source(emu);
    let id = push(emu, tree(&[("a.php", "v1")]).path(), &src);
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    let log = root.path().join("hooks.log");
    let hook = format!(
        "[[release.hooks]]\nrun = [\"/bin/sh\", \"-c\", \"echo $EMBARK_RELEASE >> {}\"]\n",
        log.display()
    );
    pull(emu, &inst, root.path(), &hook).expect_code(0);
    assert_eq!(fs::read_to_string(&log).expect("log").lines().count(), 1);
    // A crash after the link moved and before the hooks ran leaves them due in the state.
    let state_path = root.path().join(".embark/state.json");
    let mut state: Value =
        serde_json::from_slice(&fs::read(&state_path).expect("state")).expect("json");
    state["hooks_due"] = json!(id);
    fs::write(&state_path, serde_json::to_vec(&state).expect("json")).expect("write");
    let run = pull(emu, &inst, root.path(), &hook).expect_code(0);
    assert_has(&run.stderr(), "did not run after its switch");
    assert_has(&run.stdout(), "already on release");
    assert_eq!(fs::read_to_string(&log).expect("log").lines().count(), 2);
    // Run once: a further pull runs nothing.
    pull(emu, &inst, root.path(), &hook).expect_code(0);
    assert_eq!(fs::read_to_string(&log).expect("log").lines().count(), 2);
    // A state that does not name the live release (a write that failed after the link moved) is
    // repaired, not believed.
    state["hooks_due"] = Value::Null;
    state["current"] = json!("20200101T000000Z-aaaaaa");
    fs::write(&state_path, serde_json::to_vec(&state).expect("json")).expect("write");
    let run = pull(emu, &inst, root.path(), &hook).expect_code(0);
    assert_has(&run.stderr(), "repairing the state");
    let repaired: Value =
        serde_json::from_slice(&fs::read(&state_path).expect("state")).expect("json");
    assert_eq!(repaired["current"], json!(id));
}

#[test]
fn finding_6_pointer_format_manifest_summary_oversize_object_and_hook_path() {
    let emu = emulator();
    let src = source(emu);
    let inst = instance(emu, &src);
    let id = push(emu, tree(&[("a.php", "v1")]).path(), &src);
    let good_pointer = emu.s3_get(&src.bucket, "app/current");

    // A pointer of another format.
    let mut pointer: Value = serde_json::from_slice(&good_pointer).expect("pointer");
    pointer["format"] = json!("embark-pointer/2");
    emu.s3_put(
        &src.bucket,
        "app/current",
        serde_json::to_vec(&pointer).expect("json"),
    );
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(&run.stderr(), "embark-pointer/2");
    emu.s3_put(&src.bucket, "app/current", good_pointer.clone());

    // A manifest whose summary does not match its entries.
    let manifest_key = format!("app/releases/{id}/manifest.json");
    let good_manifest = emu.s3_get(&src.bucket, &manifest_key);
    let mut m = manifest(emu, &src, &id);
    m["files"] = json!(7);
    tamper_manifest(emu, &src, &id, &m);
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(&run.stderr(), "the manifest says 7 files");
    emu.s3_put(&src.bucket, &manifest_key, good_manifest);
    emu.s3_put(&src.bucket, "app/current", good_pointer);

    // An object larger than its size: the warm path stops at the size, never fills the disk.
    pull(emu, &inst, root.path(), "").expect_code(0);
    let v2 = push(
        emu,
        tree(&[("a.php", "v1"), ("big.bin", "12345")]).path(),
        &src,
    );
    emu.s3_put(
        &src.bucket,
        &format!("app/objects/{}", sha256_hex(b"12345")),
        vec![b'x'; 32 << 20],
    );
    emu.s3_put(
        &src.bucket,
        &format!("app/releases/{v2}/bundle.tar.zst"),
        b"broken".to_vec(),
    );
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(
        &run.stderr(),
        "holds more than the 5 bytes the manifest promises",
    );
    assert!(
        disk_bytes(root.path()) < 1 << 20,
        "{}",
        disk_bytes(root.path())
    );
    assert_eq!(current_release(root.path()).as_deref(), Some(id.as_str()));
}

#[test]
fn finding_6_a_hook_never_runs_the_releases_own_program_through_a_relative_path_entry() {
    use std::os::unix::fs::PermissionsExt;
    let emu = emulator();
    let src = source(emu);
    let files = tree(&[("a.php", "v1")]);
    let marker = tempfile::tempdir().expect("marker");
    let evil = files.path().join("php");
    fs::write(
        &evil,
        format!("#!/bin/sh\ntouch {}/pwned\n", marker.path().display()),
    )
    .expect("write");
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o755)).expect("chmod");
    push(emu, files.path(), &src);
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    let run = Embark::new(emu, &inst)
        .config(&format!(
            "[release]\nroot = \"{}\"\n[[release.hooks]]\nrun = [\"php\", \"-v\"]\n",
            root.path().display()
        ))
        .env(
            "PATH",
            format!(".:{}", marker.path().join("empty").display()),
        )
        .run(&["release", "pull"])
        .expect_code(1);
    assert_has(
        &run.stderr(),
        "cannot find php in PATH (absolute entries only)",
    );
    assert!(
        !marker.path().join("pwned").exists(),
        "the release's php ran"
    );
}

#[test]
fn a_bundle_larger_than_its_manifest_allows_is_refused_after_at_most_one_window_of_ranges() {
    let emu = emulator();
    let src = source(emu);
    // A one-file release whose bundle was replaced by 64 MiB: its first window of ranges is fetched
    // beside the manifest (a cold pull), then the manifest's bound refuses it.
    let id = push(emu, tree(&[("a.php", "<?php")]).path(), &src);
    let key = format!("app/releases/{id}/bundle.tar.zst");
    emu.s3_put(&src.bucket, &key, common::noise(64 << 20, 8));
    let inst = instance(emu, &src);
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(
        &run.stderr(),
        &format!("claims 67108864 bytes, more than a bundle of release {id} can hold"),
    );
    assert_eq!(current_release(root.path()), None);
    assert!(!root.path().join("releases").join(&id).exists());
    assert!(disk_bytes(root.path()) < 64 << 10);
    // At most eight ranges of 4 MiB, in the bundle's first 32 MiB: nothing past the window, and
    // no fallback to objects (a refusal is not a transport failure).
    let bundle = emu.s3_gets(&src.bucket, |p| p.ends_with(&key));
    assert!(!bundle.is_empty() && bundle.len() <= 8, "{bundle:#?}");
    let fetched: u64 = bundle.iter().filter_map(|r| r["bytes_out"].as_u64()).sum();
    assert!(fetched <= 32 << 20, "{fetched} bytes fetched: {bundle:#?}");
    assert_eq!(
        emu.s3_gets(&src.bucket, |p| p.contains("/objects/")).len(),
        0
    );
}

#[test]
fn finding_7_a_pax_global_header_is_accepted_and_a_repeated_member_is_named() {
    let emu = emulator();
    let src = source(emu);
    let inst = instance(emu, &src);
    let body = b"<?php";
    // What `git archive` writes first: a pax global header with the commit id.
    let comment = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
    let mut raw = Vec::new();
    raw.extend_from_slice(
        header(
            "pax_global_header",
            tar::EntryType::XGlobalHeader,
            comment.len() as u64,
        )
        .as_bytes(),
    );
    raw.extend_from_slice(comment);
    raw.extend(std::iter::repeat_n(0u8, 512 - comment.len()));
    let mut member = header("a.php", tar::EntryType::Regular, body.len() as u64)
        .as_bytes()
        .to_vec();
    member.extend_from_slice(body);
    member.extend(std::iter::repeat_n(0u8, 512 - body.len()));
    raw.extend_from_slice(&member);
    let mut good = raw.clone();
    good.extend_from_slice(&[0u8; 1024]);
    let id = with_bundle(emu, &src, good);
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "").expect_code(0);
    assert_eq!(current_release(root.path()).as_deref(), Some(id.as_str()));

    // A repeated member (a directory here: no body, so no byte bound is reached first).
    let src2 = source(emu);
    let inst2 = instance(emu, &src2);
    let files = tree(&[("d/a.php", "<?php")]);
    let id2 = push(emu, files.path(), &src2);
    let mut twice = Vec::new();
    for _ in 0..2 {
        let mut dir = tar::Header::new_gnu();
        dir.set_path("d").expect("path");
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_cksum();
        twice.extend_from_slice(dir.as_bytes());
    }
    let mut file = header("d/a.php", tar::EntryType::Regular, 5)
        .as_bytes()
        .to_vec();
    file.extend_from_slice(b"<?php");
    file.extend(std::iter::repeat_n(0u8, 507));
    twice.extend_from_slice(&file);
    twice.extend_from_slice(&[0u8; 1024]);
    let compressed = zstd::encode_all(&twice[..], 3).expect("zstd");
    emu.s3_put(
        &src2.bucket,
        &format!("app/releases/{id2}/bundle.tar.zst"),
        compressed,
    );
    let root2 = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst2, root2.path(), "").expect_code(1);
    assert_has(&run.stderr(), "repeats the entry 'd'");
    assert!(!run.stderr().contains("cannot writing"));
}

#[test]
fn a_missing_bucket_is_named_not_taken_for_an_empty_source() {
    let emu = emulator();
    let url = format!("s3://{}/app", unique("nobucket"));
    let inst = emu.launch_one(json!({"tags": {"embark:release": url, "embark:role": "web"}}));
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    let err = run.stderr();
    assert_has(
        &err,
        "does not exist (or is not reachable with these credentials)",
    );
    assert!(!err.contains("no release has been published"), "{err}");
}

// Conditional writes as S3 documents them (issue 14):
// https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html

#[test]
fn a_409_conditional_request_conflict_on_the_pointer_is_retried() {
    let emu = common::Emulator::start();
    let src = source(&emu);
    push(&emu, tree(&[("a.php", "v1")]).path(), &src);
    emu.fault(
        json!({"service": "s3", "operation": "PutObject", "status": 409,
                     "code": "ConditionalRequestConflict", "count": 1,
                     "path": format!("/{}/app/current", src.bucket)}),
    );
    let id = push(&emu, tree(&[("a.php", "v2")]).path(), &src);
    let pointer: Value =
        serde_json::from_slice(&emu.s3_get(&src.bucket, "app/current")).expect("pointer");
    assert_eq!(
        pointer["release"],
        json!(id),
        "the push made its release current"
    );
}

#[test]
fn a_pointer_write_whose_answer_was_lost_is_not_taken_for_a_rival_push() {
    // The PUT succeeds, its answer is lost (500), the SDK retries the same conditional PUT and meets
    // 412: the ETag it was conditioned on is gone because of its own first attempt.
    let emu = common::Emulator::start();
    let src = source(&emu);
    push(&emu, tree(&[("a.php", "v1")]).path(), &src);
    emu.fault(
        json!({"service": "s3", "operation": "PutObject", "status": 500,
                     "code": "InternalError", "count": 1, "after": true,
                     "path": format!("/{}/app/current", src.bucket)}),
    );
    let id = push(&emu, tree(&[("a.php", "v2")]).path(), &src);
    let pointer: Value =
        serde_json::from_slice(&emu.s3_get(&src.bucket, "app/current")).expect("pointer");
    assert_eq!(pointer["release"], json!(id));
    let puts: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| {
            r["operation"] == "PutObject"
                && r["path"].as_str().unwrap_or("").ends_with("/app/current")
        })
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert!(puts.contains(&412), "the retry met 412: {puts:?}");
}

#[test]
fn a_release_pull_has_a_deadline_of_its_own() {
    let emu = common::Emulator::start();
    let src = source(&emu);
    push(&emu, tree(&[("a.php", "v1")]).path(), &src);
    let inst = instance(&emu, &src);
    emu.fault(json!({"service": "s3", "operation": "GetObject", "latency_ms": 4000}));
    let root = tempfile::tempdir().expect("root");
    let run = Embark::new(&emu, &inst)
        .config(&format!(
            "deadline = \"2s\"\n[release]\nroot = \"{}\"\n",
            root.path().display()
        ))
        .run(&["release", "pull"])
        .expect_code(1);
    assert_has(&run.stderr(), "did not finish within the deadline of 2s");
    assert_eq!(current_release(root.path()), None);
}
