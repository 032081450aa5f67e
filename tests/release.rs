//! Releases: the real binary pushes to and pulls from the emulator's S3 (issue 4).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    assert_has, current_release, emulator, noise, pull, unique, wait_until, Embark, Emulator,
    Instance, Published, Source,
};
use embark::release::format::sha256_hex;
use serde_json::{json, Value};

fn source(emu: &Emulator) -> Source {
    emu.source("rel")
}

/// An instance whose group tags name the source (and a role).
fn instance(emu: &Emulator, src: &Source, role: &str) -> Instance {
    emu.launch_one(json!({"tags": {"embark:release": src.url, "embark:role": role}}))
}

fn push(emu: &Emulator, dir: &Path, src: &Source, message: &str) -> String {
    emu.push_dir(dir, &src.url, Some(message))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Every entry below `dir`: kind, mode and content digest or link target.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let p = entry.path();
            let rel = p
                .strip_prefix(base)
                .expect("prefix")
                .to_string_lossy()
                .to_string();
            let meta = fs::symlink_metadata(&p).expect("meta");
            let mode = meta.permissions().mode() & 0o7777;
            let value = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).expect("link").display())
            } else if meta.is_dir() {
                walk(base, &p, out);
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {}", sha256_hex(&fs::read(&p).expect("read")))
            };
            out.insert(rel, value);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A small PHP-like tree of `n` files.
fn small_tree(dir: &Path, n: usize) {
    for i in 0..n {
        let sub = dir.join(format!("vendor/pkg{}", i % 7));
        fs::create_dir_all(&sub).expect("mkdir");
        fs::write(
            sub.join(format!("f{i}.php")),
            format!("<?php // file {i}\n").repeat(20 + i),
        )
        .expect("write");
    }
}

/// Check that `root`'s current release matches its manifest copy byte for byte.
fn verify_current(root: &Path) -> String {
    let id = current_release(root).expect("a current release");
    let manifest: Value = serde_json::from_slice(
        &fs::read(root.join(format!(".embark/manifests/{id}.json"))).expect("manifest copy"),
    )
    .expect("manifest JSON");
    let release = root.join("releases").join(&id);
    for entry in manifest["entries"].as_array().expect("entries") {
        let p = release.join(entry["path"].as_str().expect("path"));
        match entry["type"].as_str() {
            Some("file") => assert_eq!(
                sha256_hex(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))),
                entry["sha256"].as_str().expect("sha"),
                "{}",
                p.display()
            ),
            Some("dir") => assert!(p.is_dir(), "{}", p.display()),
            _ => assert!(fs::symlink_metadata(&p).is_ok(), "{}", p.display()),
        }
    }
    id
}

fn leftovers(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [root.to_path_buf(), root.join("releases")] {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(".partial-") || name.contains(".tmp-") {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn round_trip_keeps_content_modes_links_and_names() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    let t = tree.path();
    fs::create_dir_all(t.join("app/src/Контроллер")).expect("mkdir");
    fs::create_dir_all(t.join("storage/cache/empty")).expect("mkdir");
    fs::create_dir_all(t.join(".git/objects")).expect("mkdir");
    fs::write(t.join(".git/HEAD"), "ref: main").expect("write");
    fs::write(t.join("app/src/Контроллер/índex.php"), "<?php echo 'ü';").expect("write");
    fs::write(t.join("app/zero"), "").expect("write");
    fs::write(t.join("app/big.bin"), noise(20 << 20, 1)).expect("write");
    fs::write(t.join("bin.sh"), "#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(t.join("bin.sh"), fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::set_permissions(t.join("storage/cache"), fs::Permissions::from_mode(0o700)).expect("chmod");
    symlink("app/src/Контроллер/índex.php", t.join("index.php")).expect("symlink");
    symlink("../bin.sh", t.join("app/run")).expect("symlink");
    fs::write(t.join(".env"), "SECRET=1").expect("write");
    fs::write(t.join("app/debug.log"), "x").expect("write");
    fs::write(t.join(".embarkignore"), ".env\n*.log\n").expect("write");

    push(emu, t, &src, "first");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(0);
    assert_has(&run.stdout(), "fetched the bundle");
    let id = verify_current(root.path());

    let mut want = snapshot(t);
    for excluded in [
        ".git",
        ".git/HEAD",
        ".git/objects",
        ".env",
        ".embarkignore",
        "app/debug.log",
    ] {
        assert!(
            want.remove(excluded).is_some(),
            "{excluded} was in the tree"
        );
    }
    let got = snapshot(&root.path().join("releases").join(&id));
    assert_eq!(got, want);
}

#[test]
fn incremental_pull_fetches_only_changed_objects_and_a_rerun_fetches_nothing() {
    let emu = emulator();
    let set = Published::new(emu, |t| small_tree(t, 200));
    let (src, tree, inst, root) = (&set.src, &set.tree, &set.inst, &set.root);
    pull(emu, inst, root.path(), "").expect_code(0);

    // 1% of the files change.
    let mut changed = Vec::new();
    for i in [3usize, 150] {
        let p = tree.path().join(format!("vendor/pkg{}/f{i}.php", i % 7));
        let body = format!("<?php // changed {i}\n");
        changed.push(sha256_hex(body.as_bytes()));
        fs::write(p, body).expect("write");
    }
    // A new file with the same content as a changed one: that content is fetched once.
    fs::write(
        tree.path().join("vendor/pkg1/copy.php"),
        "<?php // changed 3\n",
    )
    .expect("write");
    let v2 = push(emu, tree.path(), src, "v2");
    let before = emu.s3_requests(&src.bucket, "GetObject").len();
    let run = pull(emu, inst, root.path(), "").expect_code(0);
    assert_has(&run.stdout(), &format!("switched current to release {v2}"));
    assert_eq!(verify_current(root.path()), v2);

    let gets: Vec<String> = emu.s3_requests(&src.bucket, "GetObject")[before..]
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .collect();
    let objects: Vec<&String> = gets.iter().filter(|p| p.contains("/objects/")).collect();
    changed.sort();
    let mut fetched: Vec<String> = objects
        .iter()
        .map(|p| p.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    fetched.sort();
    assert_eq!(fetched, changed, "GETs: {gets:?}");
    assert!(
        !gets.iter().any(|p| p.ends_with("bundle.tar.zst")),
        "{gets:?}"
    );
    // The manifest came as a delta against v1's, which this instance holds (issue 16, item 1).
    assert!(
        gets.iter()
            .any(|p| p.ends_with(&format!("releases/{v2}/manifest.delta.zst"))),
        "{gets:?}"
    );
    assert!(
        !gets.iter().any(|p| p.ends_with("manifest.json")),
        "{gets:?}"
    );

    // Already current: one GET of the pointer, nothing else.
    let before = emu.s3_requests(&src.bucket, "").len();
    let run = pull(emu, inst, root.path(), "").expect_code(0);
    assert_has(&run.stdout(), "already on release");
    let after: Vec<Value> = emu.s3_requests(&src.bucket, "")[before..].to_vec();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0]["path"]
        .as_str()
        .unwrap_or_default()
        .ends_with("/app/current"));
}

#[test]
fn local_files_edited_in_place_are_fetched_again_not_reused() {
    let emu = emulator();
    let set = Published::new(emu, |t| small_tree(t, 30));
    let (src, tree, inst, root, v1) = (&set.src, &set.tree, &set.inst, &set.root, &set.first);
    pull(emu, inst, root.path(), "").expect_code(0);

    // Somebody edits the live release: one file keeps its size, one grows.
    let live = root.path().join("releases").join(v1);
    let same_size = "vendor/pkg2/f2.php";
    let grown = "vendor/pkg5/f12.php";
    let mut bytes = fs::read(live.join(same_size)).expect("read");
    bytes[0] ^= 0x20;
    fs::write(live.join(same_size), &bytes).expect("write");
    let mut bytes = fs::read(live.join(grown)).expect("read");
    bytes.extend_from_slice(b"<?php system($_GET['x']);");
    fs::write(live.join(grown), &bytes).expect("write");

    fs::write(tree.path().join("vendor/pkg0/f0.php"), "<?php // v2\n").expect("write");
    let v2 = push(emu, tree.path(), src, "v2");
    let before = emu.s3_requests(&src.bucket, "GetObject").len();
    pull(emu, inst, root.path(), "").expect_code(0);
    // Every file of v2 has the bytes its manifest names: the edits did not travel.
    assert_eq!(verify_current(root.path()), v2);
    let mut fetched: Vec<String> = emu.s3_requests(&src.bucket, "GetObject")[before..]
        .iter()
        .filter_map(|r| r["path"].as_str())
        .filter(|p| p.contains("/objects/"))
        .map(|p| p.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    fetched.sort();
    let mut want: Vec<String> = ["vendor/pkg0/f0.php", same_size, grown]
        .iter()
        .map(|f| sha256_hex(&fs::read(tree.path().join(f)).expect("read")))
        .collect();
    want.sort();
    assert_eq!(fetched, want, "the changed file and the two edited ones");
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

/// The pointer's manifest delta, as pushed.
fn pointer_delta(emu: &Emulator, src: &Source) -> Value {
    let pointer: Value =
        serde_json::from_slice(&emu.s3_get(&src.bucket, "app/current")).expect("pointer JSON");
    pointer["delta"].clone()
}

#[test]
fn a_bad_manifest_delta_is_passed_over_for_the_whole_manifest_and_a_new_instance_never_uses_one() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 50);
    let v1 = push(emu, tree.path(), &src, "v1");
    assert!(
        pointer_delta(emu, &src).is_null(),
        "a first release has no base"
    );
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "").expect_code(0);

    fs::write(tree.path().join("vendor/pkg0/f0.php"), "<?php // v2\n").expect("write");
    let v2 = push(emu, tree.path(), &src, "v2");
    let delta = pointer_delta(emu, &src);
    assert_eq!(delta["base"], v1.as_str(), "{delta}");
    // Whoever can write the bucket rewrites the delta: the pull notices, fetches the whole manifest
    // (which the pointer's sha256 still vouches for) and switches.
    let key = format!("app/releases/{v2}/manifest.delta.zst");
    let mut bytes = emu.s3_get(&src.bucket, &key);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    emu.s3_put(&src.bucket, &key, bytes);
    let before = emu.s3_requests(&src.bucket, "GetObject").len();
    let run = pull(emu, &inst, root.path(), "").expect_code(0);
    assert_has(
        &run.stderr(),
        "is not usable (it does not match the sha256 in the pointer)",
    );
    assert_eq!(verify_current(root.path()), v2);
    let gets: Vec<String> = emu.s3_requests(&src.bucket, "GetObject")[before..]
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        gets.iter()
            .any(|p| p.ends_with(&format!("releases/{v2}/manifest.json"))),
        "{gets:?}"
    );

    // An instance without v1's manifest fetches the whole manifest, and never the delta.
    let fresh = instance(emu, &src, "web");
    let other_root = tempfile::tempdir().expect("root");
    let before = emu.s3_requests(&src.bucket, "GetObject").len();
    pull(emu, &fresh, other_root.path(), "").expect_code(0);
    let gets: Vec<String> = emu.s3_requests(&src.bucket, "GetObject")[before..]
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!gets.iter().any(|p| p.contains("delta")), "{gets:?}");
    assert_eq!(verify_current(other_root.path()), v2);
}

#[test]
fn pruning_keeps_n_and_list_marks_current_and_local() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let mut ids = Vec::new();
    for i in 0..4 {
        fs::write(tree.path().join("version.txt"), format!("{i}")).expect("write");
        ids.push(push(emu, tree.path(), &src, &format!("release {i}")));
        pull(emu, &inst, root.path(), "keep = 2").expect_code(0);
    }
    let mut local: Vec<String> = fs::read_dir(root.path().join("releases"))
        .expect("releases")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    local.sort();
    let mut want = ids[2..].to_vec();
    want.sort();
    assert_eq!(local, want);

    let listing = Embark::new(emu, &inst)
        .config(&format!("[release]\nroot = \"{}\"", root.path().display()))
        .run(&["release", "list", "--json"])
        .expect_code(0)
        .json();
    let releases = listing["releases"].as_array().expect("releases");
    assert_eq!(releases.len(), 4);
    assert_eq!(releases[0]["release"], ids[3].as_str(), "newest first");
    assert_eq!(releases[0]["current"], true);
    assert_eq!(releases[0]["message"], "release 3");
    assert_eq!(releases[0]["files"], 1);
    let local_flags: Vec<bool> = releases.iter().map(|r| r["local"] == true).collect();
    assert_eq!(local_flags, [true, true, false, false]);
    assert_eq!(listing["current"], ids[3].as_str());
}

#[test]
fn hooks_run_after_the_switch_with_the_environment_and_a_failing_one_is_reported() {
    use std::io::{Read, Write};
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 3);
    let first = push(emu, tree.path(), &src, "v1");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let out = root.path().join("hook.env");

    // A local HTTP server standing in for the opcache reset script.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).expect("read");
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .expect("write");
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let hooks = format!(
        r#"
[[release.hooks]]
run = ["sh", "-c", "echo release=$EMBARK_RELEASE previous=$EMBARK_PREVIOUS_RELEASE role=$EMBARK_ROLE dir=$(pwd) > {out}"]
[[release.hooks]]
run = ["sh", "-c", "echo cron-only >> {out}"]
roles = ["cron"]
[[release.hooks]]
http_get = "http://127.0.0.1:{port}/opcache-reset.php"
"#,
        out = out.display()
    );
    pull(emu, &inst, root.path(), &hooks).expect_code(0);
    let request = server.join().expect("server");
    assert!(request.starts_with("GET /opcache-reset.php "), "{request}");
    let env = fs::read_to_string(&out).expect("hook output");
    let dir = root.path().join("releases").join(&first);
    assert_eq!(
        env.trim(),
        format!("release={first} previous= role=web dir={}", dir.display())
    );

    // A failing hook: the switch happened, the report says which hook failed, and the previous
    // release is live again with its hooks run again (issue "A bad release never stays live").
    fs::write(tree.path().join("new.php"), "<?php").expect("write");
    let second = push(emu, tree.path(), &src, "v2");
    let run = pull(
        emu,
        &inst,
        root.path(),
        &format!("{hooks}\n[[release.hooks]]\nrun = [\"false\"]\n").replace(
            &format!("http_get = \"http://127.0.0.1:{port}/opcache-reset.php\""),
            "run = [\"true\"]",
        ),
    )
    .expect_code(1);
    assert_has(
        &run.stderr(),
        &format!("rolled back to {first}: release {second} failed its switch hook `false`: it exited with status 1"),
    );
    assert_eq!(
        current_release(root.path()).as_deref(),
        Some(first.as_str())
    );
    let env = fs::read_to_string(&out).expect("hook output");
    assert_has(&env, &format!("release={first} previous={second}"));
    assert!(!env.contains("cron-only"), "{env}");
}

/// Replace the current release's manifest with `manifest` and point the pointer at it.
fn tamper_manifest(emu: &Emulator, src: &Source, id: &str, manifest: &Value) {
    let bytes = serde_json::to_vec(manifest).expect("json");
    let key = format!("app/releases/{id}/manifest.json");
    let mut pointer: Value =
        serde_json::from_slice(&emu.s3_get(&src.bucket, "app/current")).expect("pointer");
    pointer["manifest_sha256"] = json!(sha256_hex(&bytes));
    emu.s3_put(&src.bucket, &key, bytes);
    emu.s3_put(
        &src.bucket,
        "app/current",
        serde_json::to_vec(&pointer).expect("json"),
    );
}

#[test]
fn hostile_manifests_are_refused_before_anything_is_written() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    fs::create_dir(tree.path().join("d")).expect("mkdir");
    fs::write(tree.path().join("d/a.php"), "<?php").expect("write");
    let id = push(emu, tree.path(), &src, "v1");
    let original: Value = serde_json::from_slice(
        &emu.s3_get(&src.bucket, &format!("app/releases/{id}/manifest.json")),
    )
    .expect("manifest");
    let inst = instance(emu, &src, "web");
    let file = |path: &str, mode: &str| {
        json!({"path": path, "type": "file", "size": 5, "mode": mode,
               "sha256": sha256_hex(b"<?php")})
    };
    let cases = [
        (file("/etc/cron.d/evil", "0644"), "absolute path"),
        (file("d/../../evil", "0644"), "'..' component"),
        (
            json!({"path": "d/link", "type": "symlink", "target": "../../etc/shadow"}),
            "outside the release",
        ),
        (
            json!({"path": "d/null", "type": "char", "mode": "0666"}),
            "is a char",
        ),
        (
            json!({"path": "d/pipe", "type": "fifo", "mode": "0644"}),
            "is a fifo",
        ),
        (file("d/suid", "4755"), "setuid"),
        (file("d/sgid", "2755"), "setuid or setgid"),
    ];
    for (entry, why) in cases {
        let mut manifest = original.clone();
        manifest["entries"]
            .as_array_mut()
            .expect("entries")
            .push(entry.clone());
        tamper_manifest(emu, &src, &id, &manifest);
        let root = tempfile::tempdir().expect("root");
        let run = pull(emu, &inst, root.path(), "").expect_code(1);
        assert_has(&run.stderr(), &format!("refusing release {id}"));
        assert_has(&run.stderr(), why);
        assert_eq!(current_release(root.path()), None, "{entry}");
        let written: Vec<_> = fs::read_dir(root.path().join("releases"))
            .into_iter()
            .flatten()
            .collect();
        assert!(written.is_empty(), "{entry}: {written:?}");
    }
}

/// A tar.zst holding `entries` (built by hand: the bundle of a hostile or broken push).
fn bundle(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    build(&mut tar);
    let raw = tar.into_inner().expect("tar");
    zstd::encode_all(&raw[..], 3).expect("zstd")
}

#[test]
fn a_bundle_with_a_device_or_unlisted_entry_is_refused_and_leaves_nothing() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    fs::write(tree.path().join("a.php"), "<?php").expect("write");
    let id = push(emu, tree.path(), &src, "v1");
    let inst = instance(emu, &src, "web");
    let key = format!("app/releases/{id}/bundle.tar.zst");
    let device = bundle(|tar| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
        h.set_mode(0o666);
        h.set_size(0);
        tar.append_data(&mut h, "a.php", std::io::empty())
            .expect("append");
    });
    let unlisted = bundle(|tar| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(5);
        tar.append_data(&mut h, "evil.php", &b"<?php"[..])
            .expect("append");
    });
    let wrong_content = bundle(|tar| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(5);
        tar.append_data(&mut h, "a.php", &b"<?evl"[..])
            .expect("append");
    });
    for (body, why) in [
        (device, "holds 'a.php' as a character device"),
        (
            unlisted,
            "holds 'evil.php', which the manifest does not list",
        ),
        (wrong_content, "'a.php' of release"),
    ] {
        emu.s3_put(&src.bucket, &key, body);
        let root = tempfile::tempdir().expect("root");
        let run = pull(emu, &inst, root.path(), "").expect_code(1);
        assert_has(&run.stderr(), why);
        assert_eq!(current_release(root.path()), None);
        assert_eq!(leftovers(root.path()), Vec::<String>::new());
        assert!(!root.path().join("releases").join(&id).exists());
    }
}

#[test]
fn a_corrupt_object_is_refused_and_current_stays() {
    let emu = emulator();
    let set = Published::new(emu, |t| small_tree(t, 20));
    let (src, tree, inst, root, v1) = (&set.src, &set.tree, &set.inst, &set.root, &set.first);
    pull(emu, inst, root.path(), "").expect_code(0);
    let body = "<?php // v2\n";
    fs::write(tree.path().join("vendor/pkg0/f0.php"), body).expect("write");
    let v2 = push(emu, tree.path(), src, "v2");
    let sha = sha256_hex(body.as_bytes());
    emu.s3_put(
        &src.bucket,
        &format!("app/objects/{sha}"),
        b"<?php // evil\n".to_vec(),
    );
    let run = pull(emu, inst, root.path(), "").expect_code(1);
    assert_has(&run.stderr(), "'vendor/pkg0/f0.php' of release");
    assert_has(&run.stderr(), "does not match its sha256");
    assert_eq!(current_release(root.path()).as_deref(), Some(v1.as_str()));
    assert_eq!(leftovers(root.path()), Vec::<String>::new());
    assert!(!root.path().join("releases").join(&v2).exists());
}

#[test]
fn a_new_instance_refuses_a_release_the_fleet_recorded_as_failed_with_no_way_back_until_retried() {
    let emu = emulator();
    // Large enough that a new instance fetches the bundle (its first ranges come while the fleet's
    // record is asked): the refusal must still come before anything is written.
    let set = Published::new(emu, |t| small_tree(t, 300));
    let (src, inst, root, v1) = (&set.src, &set.inst, &set.root, &set.first);
    let record = json!({"release": v1, "instance": "i-0failed", "reason": "validation: 500",
                        "time": "2026-12-06T00:00:00Z", "rolled_back_to": null});
    emu.s3_put(
        &src.bucket,
        &format!("app/failed/{v1}.json"),
        serde_json::to_vec(&record).expect("json"),
    );
    let run = set.pull(emu, "").expect_code(1);
    assert_has(
        &run.stderr(),
        &format!(
            "release {v1} failed on i-0failed (validation: 500) and names no release to go back to"
        ),
    );
    assert_eq!(current_release(root.path()), None);
    assert!(!root.path().join("releases").join(v1).exists());
    assert_eq!(leftovers(root.path()), Vec::<String>::new());

    let run = Embark::new(emu, inst)
        .config(&format!(
            "[release]\nroot = \"{}\"\n",
            root.path().display()
        ))
        .run(&["release", "pull", "--retry-failed"])
        .expect_code(0);
    assert_eq!(verify_current(root.path()), *v1, "{}", run.stderr());
    // Current now: the next pull asks for the pointer alone, not the record.
    let record_lists = || {
        emu.requests_of("ListObjectsV2")
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.trim_end_matches('/') == format!("/{}", src.bucket))
                    && r["query"].as_str().is_some_and(|q| q.contains("failed"))
            })
            .count()
    };
    // Asked by the refused pull; `--retry-failed` does not ask.
    let asked = record_lists();
    assert_eq!(asked, 1);
    set.pull(emu, "").expect_code(0);
    assert_eq!(record_lists(), asked);
}

/// A source in a bucket of another region than the instance's (and than the workstation's).
fn far_source(emu: &Emulator, region: &str) -> Source {
    let bucket = unique("far");
    emu.bucket_in(&bucket, region);
    let url = format!("s3://{bucket}/app");
    Source { bucket, url }
}

#[test]
fn a_bucket_in_another_region_is_asked_there_after_one_redirect() {
    let emu = emulator();
    let src = far_source(emu, "us-west-2");
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 5);
    // The workstation's region is the instance's (eu-west-1): push follows the redirect too.
    let id = push(emu, tree.path(), &src, "v1");
    let puts = emu.s3_requests(&src.bucket, "PutObject");
    assert!(!puts.is_empty());
    assert!(
        puts.iter()
            .all(|r| r["status"] == 200 && r["region"] == "us-west-2"),
        "{puts:#?}"
    );
    let before = emu.s3_requests(&src.bucket, "GetObject").len();
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(0);
    assert_eq!(current_release(root.path()), Some(id));
    assert_has(
        &run.stderr(),
        &format!("s3://{} is in us-west-2, not {}", src.bucket, emu.region),
    );
    // One detour, on the first read; every later read goes straight to the bucket's region.
    let gets = emu.s3_requests(&src.bucket, "GetObject");
    let pulled = &gets[before..];
    assert!(pulled.len() > 2, "{pulled:#?}");
    assert_eq!(pulled[0]["status"], 301, "{pulled:#?}");
    // 206: the bundle is read as byte ranges.
    assert!(
        pulled[1..]
            .iter()
            .all(|r| (r["status"] == 200 || r["status"] == 206) && r["region"] == "us-west-2"),
        "{pulled:#?}"
    );
}

#[test]
fn a_configured_release_region_is_asked_without_a_detour() {
    let emu = emulator();
    let src = far_source(emu, "ap-southeast-2");
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 3);
    let id = push(emu, tree.path(), &src, "v1");
    let before = emu.s3_requests(&src.bucket, "GetObject").len();
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "region = \"ap-southeast-2\"").expect_code(0);
    assert_eq!(current_release(root.path()), Some(id));
    let gets = emu.s3_requests(&src.bucket, "GetObject");
    let pulled = &gets[before..];
    assert!(!pulled.is_empty());
    assert!(
        pulled
            .iter()
            .all(|r| (r["status"] == 200 || r["status"] == 206) && r["region"] == "ap-southeast-2"),
        "{pulled:#?}"
    );
}

#[test]
fn a_release_region_that_is_not_a_region_is_refused() {
    let emu = emulator();
    let src = source(emu);
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "region = \"s3.evil.example\"").expect_code(2);
    assert_has(&run.stderr(), "is not an AWS region name");
    assert!(emu.s3_requests(&src.bucket, "GetObject").is_empty());
    assert_eq!(current_release(root.path()), None);
}

#[test]
fn no_pointer_is_a_clear_error() {
    let emu = emulator();
    let src = source(emu);
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let run = pull(emu, &inst, root.path(), "").expect_code(1);
    assert_has(
        &run.stderr(),
        &format!("no release has been published at {}", src.url),
    );
}

#[test]
fn pulls_succeed_while_a_fifth_of_s3_gets_fail() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 100);
    push(emu, tree.path(), &src, "v1");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    emu.fault(
        json!({"service": "s3", "operation": "GetObject", "status": 503,
                     "code": "SlowDown", "fraction": 0.2, "path": format!("/{}/", src.bucket)}),
    );
    pull(emu, &inst, root.path(), "").expect_code(0);
    verify_current(root.path());
    for i in 0..30 {
        fs::write(
            tree.path().join(format!("vendor/pkg1/new{i}.php")),
            format!("{i}"),
        )
        .expect("w");
    }
    let v2 = push(emu, tree.path(), &src, "v2");
    pull(emu, &inst, root.path(), "").expect_code(0);
    assert_eq!(verify_current(root.path()), v2);
    let failed = emu
        .s3_requests(&src.bucket, "GetObject")
        .iter()
        .filter(|r| r["status"] == 503)
        .count();
    assert!(failed > 0, "no GET failed: the fault was not applied");
}

#[test]
fn two_racing_pushes_one_wins_the_other_reports_the_conflict() {
    let emu = emulator();
    let src = source(emu);
    let a = tempfile::tempdir().expect("a");
    let b = tempfile::tempdir().expect("b");
    small_tree(a.path(), 5);
    fs::write(b.path().join("other.php"), "<?php").expect("write");
    push(emu, a.path(), &src, "base");
    // Slow uploads: both pushes read the pointer before either writes it.
    emu.fault(
        json!({"service": "s3", "operation": "PutObject", "latency_ms": 300,
                     "path": format!("/{}/app/releases/", src.bucket)}),
    );
    let first = emu
        .workstation()
        .spawn(&["release", "push", path(a.path()), "--to", &src.url]);
    let second = emu
        .workstation()
        .spawn(&["release", "push", path(b.path()), "--to", &src.url]);
    let runs = [first.wait(), second.wait()];
    let codes: Vec<i32> = runs.iter().map(|r| r.code()).collect();
    let winners: Vec<&common::Run> = runs.iter().filter(|r| r.code() == 0).collect();
    assert_eq!(winners.len(), 1, "exit codes {codes:?}");
    let loser = runs.iter().find(|r| r.code() == 1).expect("a loser");
    assert_has(&loser.stderr(), "another push changed");
    assert_has(&loser.stderr(), "is NOT current");
    let winner_id = winners[0]
        .stdout()
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let pointer: Value =
        serde_json::from_slice(&emu.s3_get(&src.bucket, "app/current")).expect("pointer");
    assert_eq!(pointer["release"], winner_id.as_str());
}

#[test]
fn push_refuses_trees_it_could_not_recreate_safely() {
    let emu = emulator();
    let src = source(emu);
    type Make = fn(&Path);
    let cases: [(&str, Make); 3] = [
        ("is a device, FIFO or socket", |t| {
            nix::unistd::mkfifo(
                &t.join("pipe"),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .expect("mkfifo")
        }),
        ("setuid", |t| {
            fs::write(t.join("suid"), "x").expect("write");
            fs::set_permissions(t.join("suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        }),
        ("outside the release", |t| {
            symlink("../../etc/passwd", t.join("link")).expect("symlink")
        }),
    ];
    for (why, make) in cases {
        let tree = tempfile::tempdir().expect("tree");
        fs::write(tree.path().join("ok.php"), "<?php").expect("write");
        make(tree.path());
        let run = emu
            .workstation()
            .run(&["release", "push", path(tree.path()), "--to", &src.url])
            .expect_code(1);
        assert_has(&run.stderr(), "refusing to push");
        assert_has(&run.stderr(), why);
        assert_eq!(emu.s3_keys(&src.bucket), Vec::<String>::new(), "{why}");
    }
}

#[test]
fn push_of_a_missing_directory_or_a_file_is_one_usage_error() {
    let emu = emulator();
    let src = source(emu);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("build.tar");
    fs::write(&file, "x").expect("write");
    for (target, why) in [
        (dir.path().join("biuld"), "does not exist"),
        (file, "is not a directory"),
    ] {
        let run = emu
            .workstation()
            .run(&["release", "push", path(&target), "--to", &src.url])
            .expect_code(2);
        let err = run.stderr();
        assert_has(&err, why);
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    }
    assert_eq!(emu.s3_keys(&src.bucket), Vec::<String>::new());
}

#[test]
fn plan_changes_nothing() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 10);
    let id = push(emu, tree.path(), &src, "v1");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let run = Embark::new(emu, &inst)
        .config(&format!("[release]\nroot = \"{}\"", root.path().display()))
        .run(&["release", "pull", "--plan"])
        .expect_code(0);
    assert_has(
        &run.stdout(),
        &format!("would switch current from nothing to release {id}"),
    );
    assert_eq!(fs::read_dir(root.path()).expect("root").count(), 0);
}

#[test]
#[ignore = "needs root (chown); `make test` runs it with --include-ignored as root, as CI does"]
fn owner_is_applied_when_configured() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "owner_is_applied_when_configured needs root: chown"
    );
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 3);
    let id = push(emu, tree.path(), &src, "v1");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "owner = \"65534:65534\"").expect_code(0);
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(
        root.path()
            .join(format!("releases/{id}/vendor/pkg0/f0.php")),
    )
    .expect("meta");
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    let run = pull(emu, &inst, root.path(), "owner = \"no-such-user-xyz\"").expect_code(2);
    assert_has(&run.stderr(), "no-such-user-xyz");
}

/// Releases `count` with ~`files` files each, pushed in turn; returns their pointers' bytes.
fn pointers(emu: &Emulator, src: &Source, tree: &Path, count: usize, files: usize) -> Vec<Vec<u8>> {
    small_tree(tree, files);
    (0..count)
        .map(|i| {
            for j in 0..files / 4 {
                fs::write(
                    tree.join(format!("vendor/pkg2/changed{j}.php")),
                    format!("{i}-{j}"),
                )
                .expect("write");
            }
            push(emu, tree, src, &format!("r{i}"));
            emu.s3_get(&src.bucket, "app/current")
        })
        .collect()
}

#[test]
fn sigkill_at_random_moments_never_leaves_current_broken() {
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    let ptrs = pointers(emu, &src, tree.path(), 3, 120);
    let inst = instance(emu, &src, "web");
    emu.fault(
        json!({"service": "s3", "operation": "GetObject", "latency_ms": 150,
                     "path": format!("/{}/app/", src.bucket)}),
    );
    let root = tempfile::tempdir().expect("root");
    let mut seed = std::process::id() as u64;
    let mut killed_mid_way = 0;
    for trial in 0..24 {
        // Alternate the published release; the first trials start cold.
        emu.s3_put(&src.bucket, "app/current", ptrs[trial % 3].clone());
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_millis(20 + (seed >> 33) % 500);
        let mut running = Embark::new(emu, &inst)
            .config(&format!("[release]\nroot = \"{}\"", root.path().display()))
            .spawn(&["release", "pull"]);
        std::thread::sleep(delay);
        if running.kill() {
            killed_mid_way += 1;
        }
        let _ = running.wait();
        if current_release(root.path()).is_some() {
            verify_current(root.path());
        }
    }
    assert!(
        killed_mid_way >= 10,
        "only {killed_mid_way} kills landed during a pull"
    );
    pull(emu, &inst, root.path(), "").expect_code(0);
    verify_current(root.path());
    assert_eq!(leftovers(root.path()), Vec::<String>::new());
}

#[test]
#[ignore = "needs root (a tmpfs in a private mount namespace); `make test` runs it as root, as CI does"]
fn a_full_disk_is_a_clear_error_and_current_stays() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "a_full_disk_is_a_clear_error_and_current_stays needs root: mount"
    );
    let emu = emulator();
    let src = source(emu);
    let tree = tempfile::tempdir().expect("tree");
    fs::write(tree.path().join("small.php"), "<?php").expect("write");
    let v1 = push(emu, tree.path(), &src, "small");
    let v1_pointer = emu.s3_get(&src.bucket, "app/current");
    fs::write(tree.path().join("big.bin"), noise(6 << 20, 2)).expect("write");
    push(emu, tree.path(), &src, "big");
    let big_pointer = emu.s3_get(&src.bucket, "app/current");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    let root_s = root.path().display().to_string();
    let config = format!("[release]\nroot = \"{root_s}\"\n");
    let bin = common::binary();
    let bin = bin.to_str().expect("utf-8 path");
    // A 4 MiB tmpfs as the root, in a private mount namespace; the script reports what it saw.
    let script = format!(
        "set -u; mount -t tmpfs -o size=4m tmpfs {root_s} || exit 99
         curl -sf -X PUT --data-binary @{v1p} {ep}/_embark/s3/{b}/app/current >/dev/null
         {bin} release pull; echo first=$?
         curl -sf -X PUT --data-binary @{bigp} {ep}/_embark/s3/{b}/app/current >/dev/null
         {bin} release pull; echo second=$?
         echo current=$(readlink {root_s}/current)
         echo entries=$(ls -A {root_s}/releases | tr '\\n' ' ')",
        v1p = write_temp(root.path(), "v1.json", &v1_pointer),
        bigp = write_temp(root.path(), "big.json", &big_pointer),
        ep = emu.endpoint,
        b = src.bucket,
    );
    let run = Embark::new(emu, &inst)
        .config(&config)
        .env("EMBARK_BIN", bin)
        .run_program(
            "unshare",
            &["--mount", "--propagation", "private", "sh", "-c", &script],
        );
    let out = run.stdout();
    assert!(
        run.code() != 99 && !out.contains("unshare failed"),
        "cannot mount a tmpfs here: {}",
        run.stderr()
    );
    assert_has(&out, "first=0");
    assert_has(&out, "second=1");
    assert_has(&out, &format!("current=releases/{v1}"));
    assert_has(&out, &format!("entries={v1}\n"));
    assert_has(&run.stderr(), "no space left on the device while");
}

/// A file outside the tmpfs-to-be (the script reads it before mounting hides nothing else).
fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let parent: PathBuf = dir.parent().expect("parent").to_path_buf();
    let p = parent.join(format!("{}-{name}", unique("ptr")));
    fs::write(&p, bytes).expect("write");
    p.display().to_string()
}

#[test]
fn a_push_to_a_bucket_without_a_prefix_says_where_the_release_goes() {
    let emu = emulator();
    let bucket = unique("root");
    emu.bucket(&bucket);
    let tree = tempfile::tempdir().expect("tree");
    fs::write(tree.path().join("index.php"), "<?php").expect("write");
    let url = format!("s3://{bucket}");
    let run = emu
        .workstation()
        .run(&["release", "push", path(tree.path()), "--to", &url])
        .expect_code(0);
    assert_has(&run.stderr(), "names no prefix");
    assert_has(&run.stdout(), "1 file (");
    assert_has(&run.stdout(), "1 new object (");
    assert!(emu.s3_keys(&bucket).contains(&"current".to_string()));
}

#[test]
fn workstation_commands_without_a_source_ask_imds_briefly_and_name_the_way_out() {
    for args in [
        &["release", "list"][..],
        &["release", "verify"],
        &["release", "rollback"],
    ] {
        let run = Embark::offline().run(args).expect_code(2);
        let err = run.stderr();
        assert_has(&err, "within 3s");
        assert_has(&err, "--from s3://bucket/prefix");
    }
}

#[test]
fn a_warm_pull_where_everything_changed_takes_the_bundle_and_says_why() {
    let emu = emulator();
    let set = Published::new(emu, |t| small_tree(t, 200));
    set.pull(emu, "").expect_code(0);
    for i in 0..200 {
        let p = set
            .tree
            .path()
            .join(format!("vendor/pkg{}/f{i}.php", i % 7));
        fs::write(p, format!("<?php // v2 {i}\n").repeat(20 + i)).expect("write");
    }
    let v2 = set.push(emu, "everything changed");
    let plan = Embark::new(emu, &set.inst)
        .config(&format!(
            "[release]\nroot = \"{}\"\n",
            set.root.path().display()
        ))
        .run(&["release", "pull", "--plan"])
        .expect_code(0);
    assert_has(
        &plan.stdout(),
        "fetch the bundle (200 of 200 files changed (",
    );
    assert_has(&plan.stdout(), "1 range) is cheaper than 200 object GETs");
    let before = emu.s3_requests(&set.src.bucket, "GetObject").len();
    let run = set.pull(emu, "").expect_code(0);
    assert_has(&run.stdout(), "fetched the bundle");
    let gets: Vec<String> = emu.s3_requests(&set.src.bucket, "GetObject")[before..]
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect();
    assert!(!gets.iter().any(|p| p.contains("/objects/")), "{gets:?}");
    assert_eq!(
        gets.iter()
            .filter(|p| p.ends_with("bundle.tar.zst"))
            .count(),
        1,
        "{gets:?}"
    );
    assert_eq!(verify_current(set.root.path()), v2);
}

#[test]
fn an_interrupted_pull_says_what_it_left_and_the_next_pull_reuses_it() {
    let emu = emulator();
    let set = Published::new(emu, |t| small_tree(t, 300));
    set.pull(emu, "").expect_code(0);
    for i in 0..20 {
        let p = set
            .tree
            .path()
            .join(format!("vendor/pkg{}/f{i}.php", i % 7));
        fs::write(p, format!("<?php // v2 {i}\n").repeat(30)).expect("write");
    }
    let v2 = set.push(emu, "20 files changed");
    let objects = format!("/{}/app/objects/*", set.src.bucket);
    emu.fault(
        json!({"service": "s3", "operation": "GetObject", "path": objects,
                     "latency_ms": 1500, "count": 20}),
    );
    let fetched = || {
        emu.s3_requests(&set.src.bucket, "GetObject")
            .iter()
            .filter(|r| r["path"].as_str().unwrap_or_default().contains("/objects/"))
            .count()
    };
    let before = fetched();
    let running = Embark::new(emu, &set.inst)
        .config(&format!(
            "[release]\nroot = \"{}\"\n",
            set.root.path().display()
        ))
        .spawn(&["release", "pull"]);
    assert!(
        wait_until(Duration::from_secs(30), || fetched() > before),
        "no object was fetched"
    );
    // Let the first wave's files be written out, then Ctrl-C while the rest are in flight.
    std::thread::sleep(Duration::from_millis(300));
    running.interrupt();
    let run = running.wait();
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_has(&run.stderr(), "the pull was interrupted (SIGINT)");
    assert_has(&run.stderr(), "fetched so far stay in");
    assert_eq!(
        current_release(set.root.path()).as_deref(),
        Some(set.first.as_str())
    );
    let first_time = fetched() - before;
    assert!(
        first_time < 20,
        "the pull finished before it was interrupted"
    );

    let again = fetched();
    set.pull(emu, "").expect_code(0);
    assert_eq!(verify_current(set.root.path()), v2);
    let second_time = fetched() - again;
    assert!(
        second_time < 20,
        "the second pull fetched all {second_time} objects again (the first fetched {first_time})"
    );
    assert!(
        leftovers(set.root.path()).is_empty(),
        "{:?}",
        leftovers(set.root.path())
    );
}

/// Issue 29, item 1: a bundle over one range (4 MiB) comes as byte ranges on several connections, put
/// back in order and verified as before; a small one is one GET.
#[test]
fn a_large_bundle_is_fetched_as_ranges_and_verified() {
    let emu = emulator();
    let src = emu.source("ranges");
    let tree = tempfile::tempdir().expect("tree");
    // ~10 MiB that zstd cannot shrink: the first range (4 MiB), then the rest in ranges side by side.
    for i in 0..5 {
        fs::write(
            tree.path().join(format!("blob{i}.bin")),
            noise(2 << 20, 0x9e37 + i),
        )
        .expect("write");
    }
    let id = push(emu, tree.path(), &src, "v1");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "").expect_code(0);
    assert_eq!(current_release(root.path()), Some(id.clone()));
    assert_eq!(verify_current(root.path()), id);
    let bundle = emu.s3_gets(&src.bucket, |p| {
        p.contains(&format!("/releases/{id}/")) && p.ends_with(".tar.zst")
    });
    // The first 4 MiB, then the other ~6 MiB in ranges of at least 1 MiB, side by side: every byte
    // of the bundle fetched once.
    assert!(bundle.len() >= 3, "{bundle:#?}");
    let size = emu
        .s3_get(&src.bucket, &format!("app/releases/{id}/bundle.tar.zst"))
        .len() as u64;
    let fetched: u64 = bundle.iter().filter_map(|r| r["bytes_out"].as_u64()).sum();
    assert_eq!(fetched, size, "{bundle:#?}");
    assert!(bundle.iter().all(|r| r["status"] == 206), "{bundle:#?}");

    // A small release: its bundle is one GET.
    let small = emu.source("ranges-small");
    let tree = tempfile::tempdir().expect("tree");
    small_tree(tree.path(), 5);
    let id = push(emu, tree.path(), &small, "v1");
    let inst = instance(emu, &small, "web");
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "").expect_code(0);
    let bundle = emu.s3_gets(&small.bucket, |p| {
        p.contains(&format!("/releases/{id}/")) && p.ends_with(".tar.zst")
    });
    assert_eq!(bundle.len(), 1, "{bundle:#?}");
}

/// Issue 29, item 3: the bundle's parts go up several at once and are completed in order (S3 refuses
/// parts out of order), so what was pushed pulls and verifies. A part that fails ends the push with
/// S3's error: the multipart upload is aborted, and no manifest and no `current` are written.
#[test]
fn a_bundle_pushed_in_parallel_parts_verifies_and_a_failed_part_changes_nothing() {
    let emu = emulator();
    let tree = tempfile::tempdir().expect("tree");
    // ~16 MiB that zstd cannot shrink: four parts of 5 MiB, uploaded side by side.
    for i in 0..4 {
        fs::write(
            tree.path().join(format!("blob{i}.bin")),
            noise(4 << 20, 77 + i as u64),
        )
        .expect("write");
    }

    let failing = emu.source("parts-fail");
    emu.fault(
        json!({"service": "s3", "operation": "UploadPart", "status": 403,
                     "code": "AccessDenied", "count": 1,
                     "path": format!("/{}/app/releases/", failing.bucket)}),
    );
    let run = emu
        .workstation()
        .run(&["release", "push", path(tree.path()), "--to", &failing.url])
        .expect_code(1);
    assert_has(&run.stderr(), "s3:UploadPart");
    assert_eq!(
        emu.s3_requests(&failing.bucket, "AbortMultipartUpload")
            .len(),
        1
    );
    let keys = emu.s3_keys(&failing.bucket);
    assert!(
        !keys
            .iter()
            .any(|k| k == "app/current" || k.ends_with("manifest.json") || k.ends_with(".tar.zst")),
        "{keys:?}"
    );

    let src = emu.source("parts");
    let id = push(emu, tree.path(), &src, "v1");
    let parts = emu.s3_requests(&src.bucket, "UploadPart");
    assert_eq!(parts.len(), 4, "{parts:#?}");
    assert!(parts.iter().all(|r| r["status"] == 200), "{parts:#?}");
    let inst = instance(emu, &src, "web");
    let root = tempfile::tempdir().expect("root");
    pull(emu, &inst, root.path(), "").expect_code(0);
    assert_eq!(verify_current(root.path()), id);
    // From the bundle itself: a bundle put together wrong would have been refused, and the pull would
    // have fetched the objects instead.
    let objects = emu
        .s3_gets(&src.bucket, |p| p.contains("/app/objects/"))
        .len();
    assert_eq!(objects, 0);
}
