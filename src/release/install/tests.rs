//! The pipeline's rules, against an S3 answered by `aws-smithy-mocks` and a release root in a temporary
//! directory: a failing stage switches nothing, an interrupted switch is finished first, pruning keeps
//! the previous release, a manifest naming another release is refused.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_mocks::{mock, Rule};

use super::*;
use crate::config::HookPhase;
use crate::release::format::{sha256_hex, Manifest, SourceUrl, POINTER_FORMAT};
use crate::release::layout::{Rollback, State};

const OLD: &str = "20261201T000000Z-000001";
const NEW: &str = "20261202T000000Z-000002";

/// What the mocked source serves, key by key; any other key is NoSuchKey.
struct Source {
    objects: HashMap<String, Vec<u8>>,
}

impl Source {
    fn new() -> Source {
        Source {
            objects: HashMap::new(),
        }
    }

    /// A release of `files` (path, content) whose manifest claims `claims` as its id, published
    /// under `id` with the pointer naming it. Returns the pointer.
    fn publish(&mut self, id: &str, claims: &str, files: &[(&str, &[u8])]) -> Pointer {
        let nodes: Vec<Node> = files
            .iter()
            .map(|(path, body)| Node::File {
                path: path.to_string(),
                size: body.len() as u64,
                sha256: sha256_hex(body),
                mode: 0o644,
            })
            .collect();
        for (_, body) in files {
            self.objects
                .insert(format!("app/objects/{}", sha256_hex(body)), body.to_vec());
        }
        let manifest = Manifest::new(claims.into(), created(id), "t".into(), "".into(), &nodes);
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let pointer = Pointer {
            format: POINTER_FORMAT.into(),
            release: id.into(),
            manifest_sha256: sha256_hex(&bytes),
            time: "2026-12-02T00:00:00Z".into(),
            who: "t".into(),
            message: String::new(),
            delta: None,
            signature: None,
            rollback_of: None,
        };
        self.objects
            .insert(format!("app/releases/{id}/manifest.json"), bytes);
        pointer
    }

    fn store(&self) -> Store {
        let mut rules: Vec<Rule> = Vec::new();
        for (key, body) in &self.objects {
            let (key, body) = (key.clone(), body.clone());
            rules.push(
                mock!(aws_sdk_s3::Client::get_object)
                    .match_requests(move |r| r.key() == Some(key.as_str()))
                    .sequence()
                    .output(move || {
                        GetObjectOutput::builder()
                            .content_length(body.len() as i64)
                            .e_tag("\"etag\"")
                            .body(ByteStream::from(body.clone()))
                            .build()
                    })
                    .repeatedly()
                    .build(),
            );
        }
        rules.push(
            mock!(aws_sdk_s3::Client::get_object)
                .sequence()
                .error(|| {
                    GetObjectError::generic(
                        aws_smithy_types::error::metadata::ErrorMetadata::builder()
                            .code("NoSuchKey")
                            .build(),
                    )
                })
                .repeatedly()
                .build(),
        );
        let refs: Vec<&Rule> = rules.iter().collect();
        Store::mocked(&refs, SourceUrl::parse("s3://deploy-bucket/app").unwrap())
    }
}

/// `20261202T000000Z-…` → `2026-12-02T00:00:00.000Z` (the order `local_releases` sorts by).
fn created(id: &str) -> String {
    format!(
        "{}-{}-{}T{}:{}:{}.000Z",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    )
}

fn settings(root: &Path, hooks: Vec<Hook>, keep: usize) -> Settings {
    Settings {
        layout: Layout {
            root: root.to_path_buf(),
            link: "current".into(),
        },
        format: ReleaseFormat::Embark,
        keep,
        owner: None,
        hooks,
        role: None,
        trust: Trust::default(),
        validation: None,
        retry_failed: false,
        shared: Default::default(),
    }
}

/// A hook that appends `$EMBARK_RELEASE` to `log`.
fn logging_hook(log: &Path) -> Hook {
    Hook {
        run: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("echo \"$EMBARK_RELEASE\" >> {}", log.display()),
        ]),
        http_get: None,
        roles: vec![],
        timeout: Duration::from_secs(10),
        user: None,
        phase: HookPhase::Switch,
        once: false,
    }
}

/// Puts release `id` of `files` into the layout as a complete local release and switches to it,
/// without any S3 (what an earlier pull left).
fn install_locally(layout: &Layout, id: &str, files: &[(&str, &[u8])]) {
    let mut source = Source::new();
    source.publish(id, id, files);
    let manifest = source.objects[&format!("app/releases/{id}/manifest.json")].clone();
    let partial = layout.partial(id);
    fs::create_dir_all(&partial).unwrap();
    for (path, body) in files {
        fs::write(partial.join(path), body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(partial.join(path), fs::Permissions::from_mode(0o644)).unwrap();
    }
    layout.commit(id, &manifest).unwrap();
    layout.switch(id).unwrap();
    layout.hooks_ran(id).unwrap();
}

fn http() -> reqwest::Client {
    let resolver = crate::net::Resolver::hosts_only().unwrap();
    crate::net::http_client(&resolver).unwrap()
}

fn leftovers(layout: &Layout) -> Vec<String> {
    fs::read_dir(layout.releases())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect()
}

#[tokio::test]
async fn a_stage_that_fails_verification_switches_nothing_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path(), vec![], 3);
    let layout = &settings.layout;
    drop(layout.prepare().unwrap());
    install_locally(layout, OLD, &[("index.php", b"old")]);
    let mut source = Source::new();
    let pointer = source.publish(NEW, NEW, &[("index.php", b"new"), ("app.php", b"app")]);
    // The bucket's writer swapped one object's bytes.
    let app = format!("app/objects/{}", sha256_hex(b"app"));
    source.objects.insert(app, b"evil".to_vec());
    let store = source.store();
    let http = http();
    let pipeline = Pipeline::new(&store, &settings, &http);
    let err = pipeline
        .install(Target::Embark(Box::new(pointer)).into())
        .await
        .unwrap_err();
    assert!(matches!(err, ReleaseError::Corrupt { .. }), "{err}");
    assert_eq!(layout.current().as_deref(), Some(OLD));
    assert!(!layout.release(NEW).exists());
    assert!(!layout.manifest_copy(NEW).exists());
    assert_eq!(leftovers(layout), Vec::<String>::new());
    assert_eq!(layout.state().hooks_due, None);
}

#[tokio::test]
async fn an_interrupted_switch_is_finished_before_a_new_release_is_staged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let settings = settings(&dir.path().join("app"), vec![logging_hook(&log)], 3);
    let layout = &settings.layout;
    drop(layout.prepare().unwrap());
    install_locally(layout, OLD, &[("index.php", b"old")]);
    // A crash after the link moved, before OLD's hooks ran.
    let state = State {
        hooks_due: Some(OLD.into()),
        ..layout.state()
    };
    fs::write(
        dir.path().join("app/.embark/state.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    let mut source = Source::new();
    let pointer = source.publish(NEW, NEW, &[("index.php", b"new")]);
    let store = source.store();
    let http = http();
    let pipeline = Pipeline::new(&store, &settings, &http);
    let locked = pipeline.begin().await.unwrap();
    assert_eq!(fs::read_to_string(&log).unwrap(), format!("{OLD}\n"));
    assert_eq!(layout.state().hooks_due, None);
    let Stage::Staged(staged) = pipeline
        .stage(locked, Target::Embark(Box::new(pointer)).into())
        .await
        .unwrap()
    else {
        panic!("NEW is not current here: it must be staged");
    };
    assert_eq!(
        layout.current().as_deref(),
        Some(OLD),
        "staging switches nothing"
    );
    let live = pipeline
        .switch(pipeline.prepare(staged).await.unwrap())
        .await
        .unwrap();
    let pulled = pipeline.validate(live).await.unwrap();
    assert_eq!(pulled.previous.as_deref(), Some(OLD));
    assert_eq!(pulled.reused_files, 0);
    assert_eq!(fs::read_to_string(&log).unwrap(), format!("{OLD}\n{NEW}\n"));
    assert_eq!(
        fs::read(layout.link_path().join("index.php")).unwrap(),
        b"new"
    );
}

#[tokio::test]
async fn pruning_after_a_switch_keeps_the_release_just_left_however_old() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path(), vec![], 2);
    let layout = &settings.layout;
    drop(layout.prepare().unwrap());
    let ids = [
        "20261101T000000Z-00000a",
        "20261102T000000Z-00000b",
        "20261103T000000Z-00000c",
    ];
    for id in ids.iter().rev() {
        install_locally(layout, id, &[("index.php", id.as_bytes())]);
    }
    // Live: the oldest (switched to last). The pull installs a newer one with keep = 2.
    assert_eq!(layout.current().as_deref(), Some(ids[0]));
    let mut source = Source::new();
    let pointer = source.publish(NEW, NEW, &[("index.php", b"new")]);
    let store = source.store();
    let http = http();
    let pipeline = Pipeline::new(&store, &settings, &http);
    let pulled = pipeline
        .install(Target::Embark(Box::new(pointer)).into())
        .await
        .unwrap();
    assert_eq!(pulled.previous.as_deref(), Some(ids[0]));
    assert_eq!(pulled.pruned, vec![ids[1].to_string()]);
    assert_eq!(
        layout.local_releases(),
        vec![ids[0].to_string(), ids[2].to_string(), NEW.to_string()]
    );
}

#[tokio::test]
async fn a_manifest_that_names_another_release_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path(), vec![], 3);
    let layout = &settings.layout;
    let mut source = Source::new();
    // NEW's pointer and manifest object, but the manifest is OLD's (a replay).
    let pointer = source.publish(NEW, OLD, &[("index.php", b"old")]);
    let store = source.store();
    let http = http();
    let pipeline = Pipeline::new(&store, &settings, &http);
    let target = Target::Embark(Box::new(pointer));
    let planned = pipeline.plan(&target).await;
    assert!(matches!(planned, Err(ReleaseError::Refused { .. })));
    let err = pipeline.install(target.into()).await.unwrap_err();
    let ReleaseError::Refused { release, why, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(release, NEW);
    assert!(why.contains(&format!("names release {OLD}")), "{why}");
    assert_eq!(layout.current(), None);
    assert!(layout.local_releases().is_empty());
    assert_eq!(leftovers(layout), Vec::<String>::new());
}

#[tokio::test]
async fn a_rollback_interrupted_before_the_link_moved_back_is_completed_by_begin() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let failure = Hook {
        phase: HookPhase::Failure,
        run: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("echo failure $EMBARK_FAILED_RELEASE >> {}", log.display()),
        ]),
        ..logging_hook(&log)
    };
    let settings = settings(
        &dir.path().join("app"),
        vec![logging_hook(&log), failure],
        3,
    );
    let layout = &settings.layout;
    drop(layout.prepare().unwrap());
    install_locally(layout, OLD, &[("index.php", b"old")]);
    install_locally(layout, NEW, &[("index.php", b"new")]);
    // What `roll_back` writes first; the process died before the link moved.
    layout
        .begin_rollback(&Rollback {
            from: NEW.into(),
            to: OLD.into(),
            reason: "failed validation: HTTP 500".into(),
        })
        .unwrap();
    assert_eq!(layout.current().as_deref(), Some(NEW));
    let store = Source::new().store();
    let http = http();
    let pipeline = Pipeline::new(&store, &settings, &http);
    drop(pipeline.begin().await.unwrap());
    assert_eq!(layout.current().as_deref(), Some(OLD));
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!("{OLD}\nfailure {NEW}\n")
    );
    assert_eq!(layout.state().rollback, None);
    assert_eq!(layout.state().hooks_due, None);
    assert!(layout.failures().contains_key(NEW));
}
