//! `embark iam-policy` is enough (issue 14, item 9): an emulator with IAM enforcement on, an instance
//! whose only rights are the instance policy (through its role's credentials from IMDS, no static
//! keys) and a publisher whose only rights are the publisher policy. A boot, a push, the deploy agent
//! switching, a rollback and a drain all succeed; and every action each policy grants is one a run
//! called, but for those only other paths need (named, with the test that covers each).
//!
//! What moto checks (docs/emulator.md, `POST /_embark/iam`): every call's action against the policy,
//! and S3 calls' bucket and key against its resources; not other services' resources nor conditions.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The IAM action of one logged AWS call.
fn iam_action(entry: &Value) -> Option<String> {
    let service = entry["service"].as_str()?;
    let operation = entry["operation"].as_str()?;
    if service != "s3" {
        return Some(format!("{service}:{operation}"));
    }
    let action = match operation {
        "ListObjectsV2" | "ListObjects" | "HeadBucket" => "ListBucket",
        "GetObject" | "HeadObject" => "GetObject",
        "PutObject"
        | "CopyObject"
        | "UploadPart"
        | "CreateMultipartUpload"
        | "CompleteMultipartUpload" => "PutObject",
        "DeleteObject" | "DeleteObjects" => "DeleteObject",
        other => other,
    };
    Some(format!("s3:{action}"))
}

fn granted(policy: &Value) -> BTreeSet<String> {
    policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| match &s["Action"] {
            Value::Array(v) => v.clone(),
            one => vec![one.clone()],
        })
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

fn wait_for_current(root: &Path, id: &str) -> bool {
    wait_until(Duration::from_secs(60), || {
        current_release(root).as_deref() == Some(id)
    })
}

#[test]
fn the_printed_policies_are_all_a_fleet_and_its_publisher_need() {
    // Enforcement is for the rest of an emulator's life: this test has one of its own.
    let emu = &Emulator::start();
    let name = unique("iam");
    let source = format!("s3://{name}-deploy/app");
    let seed = emu.seed(json!({
        "name": name, "pool_size": 2, "lifecycle_hook": true, "terminating_hook": true,
        "group_tags": {"embark:release": source},
    }));
    let tg = emu.control("POST", "target-groups", json!({"name": unique("tg")}));
    let arn = tg["arn"].as_str().expect("arn");
    let topic = |kind: &str| {
        seed["topics"][kind]["topic_arn"]
            .as_str()
            .expect("topic")
            .to_string()
    };
    // Releases are signed with a KMS key; instances verify with its public key and no KMS right.
    let signing = emu.control("POST", "kms", json!({"alias": unique("signing")}));
    let sign_key = signing["arn"].as_str().expect("key arn").to_string();
    let public_key = signing["public_key_pem"].as_str().expect("pem").to_string();
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = format!(
        "[release]\nroot = \"{}\"\ntrusted_keys = ['''{public_key}''']\nrequire_signature = true\n\n[health]\ntarget_groups = [\"{arn}\"]\n\n\
         [notify]\nsuccess_topic = \"{}\"\nerror_topic = \"{}\"\n\n[watch]\ninterval = \"1s\"\n\n\
         [drain]\ndeadline = \"30s\"\n",
        root.path().display(),
        topic("ok"),
        topic("error"),
    );

    let instance_policy = Embark::offline()
        .config(&config)
        .run(&[
            "iam-policy",
            "--pool",
            &name,
            "--release",
            &source,
            "--group",
            &name,
        ])
        .expect_code(0)
        .json();
    let publisher_policy = Embark::offline()
        .run(&[
            "iam-policy",
            "--publisher",
            "--release",
            &source,
            "--sign-key",
            &sign_key,
        ])
        .expect_code(0)
        .json();
    let keys = emu.control(
        "POST",
        "iam",
        json!({"users": {"publisher": publisher_policy}, "roles": {"web-role": instance_policy}}),
    );
    let publisher_key = keys["users"]["publisher"]["access_key_id"]
        .as_str()
        .expect("key")
        .to_string();
    let secret = keys["users"]["publisher"]["secret_access_key"]
        .as_str()
        .expect("secret")
        .to_string();
    let publisher = || {
        emu.workstation()
            .env("AWS_ACCESS_KEY_ID", &publisher_key)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
    };
    let push = |body: &str| {
        let tree = tempfile::tempdir().expect("tree");
        std::fs::create_dir_all(tree.path().join("public")).expect("mkdir");
        std::fs::write(tree.path().join("public/index.php"), body).expect("write");
        let run = publisher()
            .run(&[
                "release",
                "push",
                tree.path().to_str().expect("utf-8"),
                "--to",
                &source,
                "--sign",
                &format!("kms:{sign_key}"),
            ])
            .expect_code(0);
        run.stdout()
            .split_whitespace()
            .nth(2)
            .expect("release id")
            .to_string()
    };

    // Enforcement is on: the test's own static keys are refused.
    let refused = emu
        .workstation()
        .run(&["release", "list", "--from", &source]);
    assert_ne!(refused.code(), 0, "{}", refused.stdout());

    let v1 = push("<?php echo 1;");
    // The instance reads its tags through the API (DescribeTags) when they are not in IMDS.
    let inst = emu.launch_one(json!({"group": name, "role": "web-role", "metadata_tags": false}));
    let on_instance = || {
        Embark::new(emu, &inst)
            .config(&config)
            .env("EMBARK_STATE_DIR", state.path())
            .without("AWS_ACCESS_KEY_ID")
            .without("AWS_SECRET_ACCESS_KEY")
    };
    let boot = on_instance().run(&["boot"]);
    assert_eq!(boot.code(), 0, "{}\n{}", boot.stdout(), boot.stderr());
    assert_eq!(current_release(root.path()).as_deref(), Some(v1.as_str()));

    let agent = on_instance().spawn(&["release", "watch"]);
    let v2 = push("<?php echo 2;");
    // What a CI job runs after its push: the fleet's status objects and the group's InService
    // instances, with the publisher's rights only.
    let waited = publisher().run(&[
        "release",
        "status",
        "--from",
        &source,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(waited.code(), 0, "{}\n{}", waited.stdout(), waited.stderr());
    assert!(
        waited.stdout().contains(&format!("1/1 on {v2}")),
        "{}",
        waited.stdout()
    );
    let switched = wait_for_current(root.path(), &v2);
    let rollback = publisher().run(&["release", "rollback", "--from", &source]);
    assert_eq!(rollback.code(), 0, "{}", rollback.stderr());
    let rolled_back = switched && wait_for_current(root.path(), &v1);
    agent.terminate();
    let agent = agent.wait();
    assert!(
        switched,
        "the agent did not switch to {v2}: {}",
        agent.stderr()
    );
    assert!(
        rolled_back,
        "the agent did not roll back to {v1}: {}",
        agent.stderr()
    );

    emu.control("POST", "terminate", json!({"instance_id": inst.id}));
    let drain = on_instance().run(&["drain"]);
    assert_eq!(drain.code(), 0, "{}\n{}", drain.stdout(), drain.stderr());

    // Nothing was refused; who called what.
    let log = emu.requests();
    let refused: Vec<&Value> = log
        .iter()
        .filter(|r| r["service"] != "imds" && r["status"].as_u64().is_some_and(|s| s == 403))
        .filter(|r| r["access_key"].as_str() != Some("AKIDEMBARKTEST"))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let called_by = |instance: bool| -> BTreeSet<String> {
        log.iter()
            .filter(|r| r["service"] != "imds" && r["status"].as_u64().is_some_and(|s| s < 400))
            .filter(|r| {
                let key = r["access_key"].as_str().unwrap_or_default();
                if instance {
                    key.starts_with("ASIA")
                } else {
                    key == publisher_key
                }
            })
            .filter_map(iam_action)
            .collect()
    };
    let publisher_unused: Vec<String> = granted(&publisher_policy)
        .difference(&called_by(false))
        .cloned()
        .collect();
    // AbortMultipartUpload: only a multipart push that fails half-way (tests/release.rs).
    assert_eq!(
        publisher_unused,
        vec!["s3:AbortMultipartUpload".to_string()]
    );
    let instance_unused: Vec<String> = granted(&instance_policy)
        .difference(&called_by(true))
        .cloned()
        .collect();
    assert_eq!(
        instance_unused,
        vec![
            // A boot that fails (tests/boot.rs: the failure policy marks the instance unhealthy).
            "autoscaling:SetInstanceHealth".to_string(),
            // A step that outlasts the heartbeat timeout (tests/boot.rs).
            "autoscaling:RecordLifecycleActionHeartbeat".to_string(),
            // Giving an address back when going into a warm pool (tests/drain.rs).
            "ec2:DisassociateAddress".to_string(),
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>(),
        "granted but not called"
    );
}
