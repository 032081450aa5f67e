//! `embark boot`, `embark health`, `embark status`: the real binary against the emulator (issue 6).

mod common;

use std::fs;
use std::path::Path;

use common::{assert_has, current_release, emulator, unique, Embark, Emulator, Instance};
use serde_json::{json, Value};

/// A seeded account of this test's own: group (with or without a launching hook), pool, bucket with a
/// pushed release, topics with queues.
struct Account {
    name: String,
    seed: Value,
    source: String,
}

fn account(emu: &Emulator, hook: bool, heartbeat_timeout: u64) -> Account {
    let name = unique("boot");
    let source = format!("s3://{name}-deploy/app");
    let seed = emu.seed(json!({
        "name": name, "pool_size": 3, "lifecycle_hook": hook,
        "heartbeat_timeout": heartbeat_timeout,
        "group_tags": {"embark:release": source},
    }));
    emu.push_files(
        &source,
        &[
            ("public/index.php", "<?php echo 'hi';"),
            ("public/health.php", "<?php"),
        ],
    );
    Account { name, seed, source }
}

impl Account {
    fn launch(&self, emu: &Emulator) -> Instance {
        emu.launch_one(json!({"group": self.name}))
    }

    fn topic(&self, kind: &str) -> &str {
        self.seed["topics"][kind]["topic_arn"]
            .as_str()
            .expect("topic")
    }

    fn messages(&self, emu: &Emulator, kind: &str) -> Vec<Value> {
        let url = self.seed["topics"][kind]["queue_url"]
            .as_str()
            .expect("queue");
        match emu.control("GET", &format!("messages?queue_url={url}"), json!({})) {
            Value::Array(v) => v,
            other => panic!("messages: {other}"),
        }
    }

    fn config(&self, root: &Path, extra: &str) -> String {
        format!(
            "[release]\nroot = \"{}\"\n\n[notify]\nsuccess_topic = \"{}\"\nerror_topic = \"{}\"\n{extra}",
            root.display(),
            self.topic("ok"),
            self.topic("error")
        )
    }
}

/// The instance's one completed lifecycle action.
fn the_action(emu: &Emulator, id: &str) -> Value {
    let actions = lifecycle_of(emu, id);
    assert_eq!(actions.len(), 1, "{actions:?}");
    actions[0].clone()
}

impl Account {
    /// The one notification on the `kind` topic (and none on the other).
    fn the_message(&self, emu: &Emulator, kind: &str) -> Value {
        let got = self.messages(emu, kind);
        assert_eq!(got.len(), 1, "{got:?}");
        let other = if kind == "ok" { "error" } else { "ok" };
        assert!(self.messages(emu, other).is_empty());
        got[0].clone()
    }
}

fn lifecycle_of(emu: &Emulator, id: &str) -> Vec<Value> {
    match emu.control("GET", "lifecycle", json!({})) {
        Value::Array(v) => v.into_iter().filter(|a| a["instance_id"] == id).collect(),
        other => panic!("lifecycle: {other}"),
    }
}

fn state_of(emu: &Emulator, id: &str) -> String {
    emu.instance(id)["lifecycle_state"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

fn bound_to(emu: &Emulator, pool: &str, id: &str) -> Vec<String> {
    emu.addresses(pool)
        .iter()
        .filter(|a| a["instance_id"] == id)
        .map(|a| a["public_ip"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn status_json(embark: Embark) -> Value {
    embark.run(&["status", "--json"]).json()
}

/// The same state dir for several runs on one instance.
fn on(emu: &Emulator, inst: &Instance, state: &Path, config: &str) -> Embark {
    Embark::new(emu, inst)
        .config(config)
        .env("EMBARK_STATE_DIR", state)
}

#[test]
fn full_boot_binds_pulls_continues_notifies_and_reports() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    assert_eq!(state_of(emu, &inst.id), "Pending:Wait");
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    let run = on(emu, &inst, state.path(), &config)
        .env("EMBARK_LOG_FORMAT", "json")
        .run(&["boot"])
        .expect_code(0);

    assert_eq!(bound_to(emu, &acct.name, &inst.id).len(), 1);
    let link = fs::read_link(root.path().join("current")).expect("current link");
    assert!(root.path().join(&link).join("public/index.php").is_file());
    assert_eq!(state_of(emu, &inst.id), "InService");
    assert_eq!(the_action(emu, &inst.id)["result"], "CONTINUE");
    let ok = acct.the_message(emu, "ok");
    assert_eq!(
        ok["subject"],
        format!("embark: {} {} boot succeeded", acct.name, inst.id).as_str()
    );
    assert_has(
        ok["message"].as_str().unwrap_or_default(),
        "lifecycle action completed: CONTINUE",
    );

    let report = status_json(on(emu, &inst, state.path(), &config));
    assert_eq!(report["status"], "done");
    assert_eq!(report["instance_id"], inst.id.as_str());
    let steps = report["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    // The logs step (issue 18) runs after the release step; nothing configures it here.
    assert_eq!(
        names,
        ["identity", "eip", "efs", "release", "logs", "health"]
    );
    for step in steps {
        assert!(step["duration_ms"].is_u64(), "{step}");
        let want = if step["name"] == "efs" || step["name"] == "logs" {
            "skipped"
        } else {
            "ok"
        };
        assert_eq!(step["outcome"], want, "{step}");
    }
    let human = on(emu, &inst, state.path(), &config)
        .run(&["status"])
        .expect_code(0)
        .stdout();
    assert_has(&human, "status: done");
    assert_has(&human, "release   ok");

    // JSON log lines name the step and the instance.
    let lines: Vec<Value> = run
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["step"] == "release" && l["instance_id"] == inst.id.as_str()),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_failing_step_abandons_notifies_and_says_which_step() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    // Corrupt the release: its bundle no longer matches the manifest.
    let bucket = format!("{}-deploy", acct.name);
    let pointer: Value =
        serde_json::from_slice(&emu.s3_get(&bucket, "app/current")).expect("pointer");
    let id = pointer["release"].as_str().expect("id");
    emu.s3_put(
        &bucket,
        &format!("app/releases/{id}/bundle.tar.zst"),
        b"not zstd".to_vec(),
    );
    let inst = acct.launch(emu);
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(1);
    assert_has(&run.stderr(), "boot failed at step release");
    assert_has(&run.stderr(), "lifecycle action ABANDON sent");

    assert_eq!(the_action(emu, &inst.id)["result"], "ABANDON");
    assert_eq!(emu.instance(&inst.id)["state"], "terminated");
    let error = acct.the_message(emu, "error");
    assert_has(
        error["subject"].as_str().unwrap_or_default(),
        "boot failed at release",
    );

    let report = status_json(on(emu, &inst, state.path(), &config));
    assert_eq!(report["status"], "error");
    let release = &report["steps"][3];
    assert_eq!(release["name"], "release");
    assert_eq!(release["outcome"], "failed");
    assert_has(release["detail"].as_str().unwrap_or_default(), "corrupt");
    assert_eq!(report["steps"][4]["outcome"], "not_run");
    on(emu, &inst, state.path(), &config)
        .run(&["status"])
        .expect_code(1);
}

#[test]
fn a_health_url_that_never_answers_fails_at_its_deadline_and_abandons() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    // Port 9 (discard) on loopback: nothing listens.
    let config = acct.config(
        root.path(),
        "\n[health]\nurl = \"http://127.0.0.1:9/aws-health-check/\"\ntimeout = \"2s\"\n",
    );
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(1);
    assert_has(&run.stderr(), "did not answer 2xx within 2s");
    assert_eq!(lifecycle_of(emu, &inst.id)[0]["result"], "ABANDON");
    let report = status_json(on(emu, &inst, state.path(), &config));
    assert_eq!(report["steps"][5]["name"], "health");
    assert_eq!(report["steps"][5]["outcome"], "failed");
}

#[test]
fn outside_a_group_lifecycle_is_skipped_targets_registered_and_failure_marks_nothing() {
    let emu = emulator();
    let acct = account(emu, false, 300);
    let tg = emu.control("POST", "target-groups", json!({"name": unique("tg")}));
    let arn = tg["arn"].as_str().expect("arn");
    let inst = emu.launch_one(json!({"tags": {"embark:release": acct.source}}));
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(
        root.path(),
        &format!("\n[health]\ntarget_groups = [\"{arn}\"]\n"),
    );
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    assert_has(
        &run.stdout(),
        "not in an Auto Scaling group: no lifecycle action",
    );
    let targets = emu.control("GET", &format!("targets?arn={arn}"), json!({}));
    assert_eq!(targets[0]["id"], inst.id.as_str(), "{targets}");

    // A failure outside a group: nothing is marked unhealthy.
    let other = emu.launch_one(json!({"tags": {"embark:release": acct.source}}));
    let bad = acct.config(
        root.path(),
        "\n[health]\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"1s\"\n",
    );
    let state2 = tempfile::tempdir().expect("state");
    let run = on(emu, &other, state2.path(), &bad)
        .run(&["boot"])
        .expect_code(1);
    assert_has(
        &run.stderr(),
        "not in an Auto Scaling group: nothing marked unhealthy",
    );
    let marked: Vec<Value> = emu
        .requests_of("SetInstanceHealth")
        .into_iter()
        .filter(|r| r["params"]["InstanceId"] == other.id.as_str())
        .collect();
    assert!(marked.is_empty(), "{marked:?}");
}

#[test]
fn in_a_group_without_a_hook_a_failure_marks_the_instance_unhealthy_unless_kept() {
    let emu = emulator();
    let acct = account(emu, false, 300);
    for (on_failure, marked) in [("abandon", true), ("keep", false)] {
        let inst = acct.launch(emu);
        let root = tempfile::tempdir().expect("root");
        let state = tempfile::tempdir().expect("state");
        let config = acct.config(
            root.path(),
            &format!(
                "\n[health]\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"1s\"\non_failure = \"{on_failure}\"\n"
            ),
        );
        let run = on(emu, &inst, state.path(), &config)
            .run(&["boot"])
            .expect_code(1);
        let calls: Vec<Value> = emu
            .requests_of("SetInstanceHealth")
            .into_iter()
            .filter(|r| r["params"]["InstanceId"] == inst.id.as_str())
            .collect();
        assert_eq!(!calls.is_empty(), marked, "{on_failure}: {calls:?}");
        if marked {
            assert_eq!(calls[0]["params"]["HealthStatus"], "Unhealthy");
            assert_has(&run.stderr(), "marked Unhealthy");
        } else {
            assert_has(&run.stderr(), "kept for debugging");
        }
    }
}

/// Requests that change something, made for this instance or this account.
fn changes(emu: &Emulator, inst: &Instance, acct: &Account, after: usize) -> Vec<Value> {
    const MUTATING: [&str; 9] = [
        "AssociateAddress",
        "DisassociateAddress",
        "CompleteLifecycleAction",
        "RecordLifecycleActionHeartbeat",
        "SetInstanceHealth",
        "RegisterTargets",
        "Publish",
        "PutObject",
        "GetObject",
    ];
    emu.requests()[after..]
        .iter()
        .filter(|r| MUTATING.contains(&r["operation"].as_str().unwrap_or_default()))
        .filter(|r| {
            let text = r.to_string();
            text.contains(&inst.id) || text.contains(&acct.name)
        })
        .filter(|r| {
            !r["path"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/app/current")
        })
        .cloned()
        .collect()
}

#[test]
fn a_second_boot_on_the_same_instance_changes_nothing() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    acct.messages(emu, "ok");
    let addresses = emu.addresses(&acct.name);
    let link = fs::read_link(root.path().join("current")).expect("link");

    let before = emu.requests().len();
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    assert_has(&run.stdout(), "already bound");
    assert_has(&run.stdout(), "already on release");
    assert_has(&run.stdout(), "already completed by an earlier boot");
    assert_eq!(changes(emu, &inst, &acct, before), Vec::<Value>::new());
    assert_eq!(emu.addresses(&acct.name), addresses);
    assert_eq!(
        fs::read_link(root.path().join("current")).expect("link"),
        link
    );
    assert!(acct.messages(emu, "ok").is_empty());
    assert_eq!(lifecycle_of(emu, &inst.id).len(), 1);

    // State left by another instance id (an image baked after a test boot) is ignored.
    let next = acct.launch(emu);
    let root2 = tempfile::tempdir().expect("root");
    let config2 = acct.config(root2.path(), "");
    let run = on(emu, &next, state.path(), &config2)
        .run(&["boot"])
        .expect_code(0);
    assert_has(
        &run.stderr(),
        &format!("ignoring the status left by instance {}", inst.id),
    );
    assert_eq!(state_of(emu, &next.id), "InService");
}

#[test]
fn plan_changes_nothing() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    let addresses = emu.addresses(&acct.name);
    let before = emu.requests().len();
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot", "--plan"])
        .expect_code(0);
    let out = run.stdout();
    assert_has(&out, "would switch current from nothing to release");
    assert_has(&out, "would complete the lifecycle action of hook");
    assert_has(&out, "plan: associate one of the 3 candidates");
    assert_eq!(emu.addresses(&acct.name), addresses);
    assert_eq!(state_of(emu, &inst.id), "Pending:Wait");
    assert_eq!(fs::read_dir(root.path()).expect("root").count(), 0);
    assert!(!state.path().join("status.json").exists());
    let changed: Vec<Value> = changes(emu, &inst, &acct, before)
        .into_iter()
        .filter(|r| r["operation"] != "GetObject")
        .collect();
    assert_eq!(changed, Vec::<Value>::new());
}

#[test]
fn heartbeats_keep_a_slow_boot_alive_past_the_hook_timeout() {
    let emu = emulator();
    let acct = account(emu, true, 3);
    let inst = acct.launch(emu);
    // Every S3 read of this account takes 2 s: the release step alone (pointer, manifest, bundle)
    // outlasts the 3 s heartbeat timeout twice over.
    emu.fault(
        json!({"service": "s3", "operation": "GetObject", "latency_ms": 2000,
                     "path": format!("/{}-deploy/", acct.name)}),
    );
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    let actions = lifecycle_of(emu, &inst.id);
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["result"], "CONTINUE");
    assert_eq!(actions[0]["timed_out"], false);
    assert!(
        actions[0]["heartbeats"].as_u64().unwrap_or(0) >= 2,
        "{actions:?}"
    );
    assert_eq!(state_of(emu, &inst.id), "InService");
}

// Fail loud (issue 15): a boot that did nothing it was meant to do is a failure, never `done`.

#[test]
fn a_named_config_file_that_does_not_exist_is_a_usage_error() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    let state = tempfile::tempdir().expect("state");
    let run = Embark::new(emu, &inst)
        .env("EMBARK_CONFIG", state.path().join("embrak.toml"))
        .env("EMBARK_STATE_DIR", state.path())
        .run(&["boot"])
        .expect_code(2);
    assert_has(&run.stderr(), "embrak.toml does not exist");
    assert_eq!(state_of(emu, &inst.id), "Pending:Wait");
    assert!(lifecycle_of(emu, &inst.id).is_empty());
}

#[test]
fn tags_that_do_not_propagate_fail_the_boot_and_abandon() {
    let emu = emulator();
    let name = unique("noprop");
    emu.seed(json!({
        "name": name, "pool_size": 1, "lifecycle_hook": true, "propagate_tags": false,
        "group_tags": {"embark:release": format!("s3://{name}-deploy/app")},
    }));
    let inst = emu.launch_one(json!({"group": name}));
    let state = tempfile::tempdir().expect("state");
    let run = Embark::new(emu, &inst)
        .env("EMBARK_STATE_DIR", state.path())
        .run(&["boot"])
        .expect_code(2);
    let err = run.stderr();
    assert_has(&err, "nothing to do");
    assert_has(&err, "PropagateAtLaunch=false");
    assert_has(&err, "embark:release");
    assert_eq!(the_action(emu, &inst.id)["result"], "ABANDON");
    let status = status_json(Embark::new(emu, &inst).env("EMBARK_STATE_DIR", state.path()));
    assert_eq!(status["status"], "error");
    assert_eq!(status["instance_id"], inst.id.as_str());
}

#[test]
fn a_required_step_that_is_skipped_fails_the_boot() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "\n[boot]\nrequire = [\"release\", \"efs\"]\n");
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(2);
    assert_has(&run.stderr(), "this group requires efs");
    assert_has(&run.stderr(), "it is not configured");
    assert_eq!(the_action(emu, &inst.id)["result"], "ABANDON");
    assert!(
        !root.path().join("current").exists(),
        "nothing was pulled before the check"
    );
}

#[test]
fn a_tag_typo_abandons_at_once_with_the_instance_in_the_report() {
    let emu = emulator();
    let name = unique("typo");
    emu.seed(json!({
        "name": name, "pool_size": 1, "lifecycle_hook": true,
        "group_tags": {"embark:eip-reserv": "2"},
    }));
    let inst = emu.launch_one(json!({"group": name}));
    let state = tempfile::tempdir().expect("state");
    let run = Embark::new(emu, &inst)
        .env("EMBARK_STATE_DIR", state.path())
        .run(&["boot"])
        .expect_code(2);
    assert_has(&run.stderr(), "did you mean embark:eip-reserve?");
    // The group replaces the instance now, not at the hook's timeout.
    assert_eq!(the_action(emu, &inst.id)["result"], "ABANDON");
    let status = status_json(Embark::new(emu, &inst).env("EMBARK_STATE_DIR", state.path()));
    assert_eq!(status["instance_id"], inst.id.as_str());
    assert!(status["duration_ms"].as_u64().unwrap_or(0) > 0, "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("ABANDON"), "{error}");
    assert!(!error.contains("without an identity"), "{error}");
}

#[test]
fn no_credentials_is_one_clear_sentence() {
    let emu = emulator();
    let acct = account(emu, false, 300);
    let inst = acct.launch(emu);
    let run = Embark::new(emu, &inst)
        .without("AWS_ACCESS_KEY_ID")
        .without("AWS_SECRET_ACCESS_KEY")
        .env("HOME", tempfile::tempdir().expect("home").path())
        .run(&["eip", "status"])
        .expect_code(1);
    let err = run.stderr();
    assert_has(&err, "no AWS credentials for ec2:DescribeAddresses");
    assert!(!err.contains("dispatch failure"), "{err}");
}

#[test]
fn auto_refuses_to_guess_between_several_launching_hooks() {
    let emu = emulator();
    let name = unique("hooks");
    emu.seed(json!({
        "name": name, "pool_size": 1, "lifecycle_hook": true,
        "extra_launching_hooks": ["dns-registration"],
        "group_tags": {"embark:release": format!("s3://{name}-deploy/app")},
    }));
    let inst = emu.launch_one(json!({"group": name}));
    let run = Embark::new(emu, &inst)
        .run(&["boot", "--plan"])
        .expect_code(2);
    let err = run.stderr();
    assert_has(&err, "launching lifecycle hooks");
    assert_has(&err, "dns-registration");
    assert_has(&err, &format!("{name}-launching"));
    // Nothing was completed: neither our hook nor the other team's.
    assert!(lifecycle_of(emu, &inst.id).is_empty());
}

#[test]
fn a_boot_and_the_agent_run_on_instance_profile_credentials_across_a_rotation() {
    // No static keys at all: the credentials come from IMDS (iam/security-credentials/<role>), expire,
    // and rotate halfway through their lifetime, as EC2 serves them.
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = emu
        .launch(json!({"group": acct.name, "role": "web-role", "credential_lifetime": 20}))
        .into_iter()
        .next()
        .expect("instance");
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "\n[watch]\ninterval = \"1s\"\n");
    let keyless = || {
        on(emu, &inst, state.path(), &config)
            .without("AWS_ACCESS_KEY_ID")
            .without("AWS_SECRET_ACCESS_KEY")
    };
    keyless().run(&["boot"]).expect_code(0);
    assert_eq!(state_of(emu, &inst.id), "InService");
    let agent = keyless().spawn(&["release", "watch"]);
    std::thread::sleep(std::time::Duration::from_secs(14));
    let v2 = emu.push_files(&acct.source, &[("public/index.php", "<?php echo 2;")]);
    let started = std::time::Instant::now();
    while current_release(root.path()).as_deref() != Some(v2.as_str())
        && started.elapsed() < std::time::Duration::from_secs(30)
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    agent.terminate();
    let run = agent.wait();
    assert_eq!(
        current_release(root.path()).as_deref(),
        Some(v2.as_str()),
        "{}",
        run.stderr()
    );
    let keys: std::collections::BTreeSet<String> = emu
        .requests()
        .iter()
        .filter(|r| r["service"] != "imds")
        .filter_map(|r| r["access_key"].as_str().map(str::to_string))
        .filter(|k| k.starts_with("ASIA"))
        .collect();
    assert!(
        keys.len() >= 2,
        "the credentials rotated and were picked up: {keys:?}"
    );
    assert!(
        !run.stderr().contains("no AWS credentials"),
        "{}",
        run.stderr()
    );
}

/// A warm pool (issue 14, item 1): the launching hook fires twice for one instance id. The boot into
/// the pool stages the release and completes the pool's action, and holds nothing a stopped instance
/// must not (no address, no targets, no success message); the boot out of the pool completes its own.
#[test]
fn a_warm_pool_boot_stages_and_the_boot_out_of_the_pool_completes_its_own_action() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = emu.launch_one(json!({"group": acct.name, "warm_pool": "Warmed:Stopped"}));
    assert_eq!(state_of(emu, &inst.id), "Warmed:Pending:Wait");
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    assert_has(&run.stdout(), "going into its warm pool (Warmed:Stopped)");
    assert!(
        bound_to(emu, &acct.name, &inst.id).is_empty(),
        "no address in the pool"
    );
    assert!(
        root.path().join("current/public/index.php").is_file(),
        "staged"
    );
    assert_eq!(state_of(emu, &inst.id), "Warmed:Stopped");
    assert_eq!(the_action(emu, &inst.id)["result"], "CONTINUE");
    assert!(
        acct.messages(emu, "ok").is_empty(),
        "no success message yet"
    );

    // Out of the pool: a second launching action for the same instance; the boot completes it.
    emu.control(
        "POST",
        &format!("instances/{}", inst.id),
        json!({"warmed": null}),
    );
    assert_eq!(state_of(emu, &inst.id), "Pending:Wait");
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    assert_has(&run.stdout(), "lifecycle action completed: CONTINUE");
    assert_eq!(state_of(emu, &inst.id), "InService");
    assert_eq!(bound_to(emu, &acct.name, &inst.id).len(), 1);
    let actions = lifecycle_of(emu, &inst.id);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(actions
        .iter()
        .all(|a| a["result"] == "CONTINUE" && a["timed_out"] == false));
    acct.the_message(emu, "ok");
}

/// An instance back in its warm pool and out again: the drain completes the pool's action, and the
/// next boot out of the pool completes the new one (a finished boot of the same instance earlier does
/// not make it a rerun).
#[test]
fn back_into_the_warm_pool_and_out_again_completes_every_action() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    emu.control(
        "POST",
        &format!("instances/{}", inst.id),
        json!({"warmed": "Warmed:Stopped"}),
    );
    assert_eq!(state_of(emu, &inst.id), "Warmed:Pending:Wait");
    let run = on(emu, &inst, state.path(), &config)
        .run(&["drain"])
        .expect_code(0);
    assert_has(
        &run.stdout(),
        "launching (warm pool) action completed: CONTINUE",
    );
    assert_eq!(state_of(emu, &inst.id), "Warmed:Stopped");
    assert!(
        bound_to(emu, &acct.name, &inst.id).is_empty(),
        "the address went back"
    );

    emu.control(
        "POST",
        &format!("instances/{}", inst.id),
        json!({"warmed": null}),
    );
    on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    assert_eq!(state_of(emu, &inst.id), "InService");
    assert_eq!(bound_to(emu, &acct.name, &inst.id).len(), 1);
    let actions = lifecycle_of(emu, &inst.id);
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(actions
        .iter()
        .all(|a| a["result"] == "CONTINUE" && a["timed_out"] == false));
}

/// The EIP, EFS and release steps run at once (issue 16, item 2): with the address's association
/// slowed down, the release's GETs start before it is confirmed; the report still has each step.
#[test]
fn the_release_is_fetched_while_the_address_is_being_bound() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    emu.fault(
        json!({"service": "ec2", "operation": "AssociateAddress", "latency_ms": 600,
                     "params": {"InstanceId": inst.id}}),
    );
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    let bucket = format!("{}-deploy", acct.name);
    let before = emu.s3_requests(&bucket, "GetObject").len();
    on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(0);
    let associate: Vec<Value> = emu
        .requests_of("AssociateAddress")
        .into_iter()
        .filter(|r| r["params"]["InstanceId"] == inst.id.as_str())
        .collect();
    assert_eq!(associate.len(), 1, "{associate:?}");
    let confirmed = associate[0]["end"].as_f64().expect("end");
    let gets = emu.s3_requests(&bucket, "GetObject");
    let first_get = gets[before..]
        .iter()
        .filter_map(|r| r["time"].as_f64())
        .fold(f64::INFINITY, f64::min);
    assert!(
        first_get < confirmed,
        "the first release GET ({first_get}) came after the association was confirmed ({confirmed})"
    );
    let report = status_json(on(emu, &inst, state.path(), &config));
    for (i, name) in ["identity", "eip", "efs", "release", "logs", "health"]
        .iter()
        .enumerate()
    {
        assert_eq!(report["steps"][i]["name"], *name);
    }
    assert!(
        report["steps"][1]["duration_ms"].as_u64() >= Some(600),
        "{report}"
    );
    assert_eq!(state_of(emu, &inst.id), "InService");
}

/// A step that fails while the others run cancels them: nothing is switched, the failure policy
/// applies and names the step.
#[test]
fn a_failing_address_step_cancels_the_release_and_switches_nothing() {
    let emu = emulator();
    let acct = account(emu, true, 300);
    let inst = acct.launch(emu);
    emu.fault(
        json!({"service": "ec2", "operation": "AssociateAddress", "status": 403,
                     "code": "UnauthorizedOperation", "message": "not allowed", "count": 10,
                     "params": {"InstanceId": inst.id}}),
    );
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = acct.config(root.path(), "");
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(1);
    assert_has(&run.stderr(), "boot failed at step eip");
    assert!(
        std::fs::symlink_metadata(root.path().join("current")).is_err(),
        "a boot whose address step failed switched a release"
    );
    assert_eq!(the_action(emu, &inst.id)["result"], "ABANDON");
    let report = status_json(on(emu, &inst, state.path(), &config));
    assert_eq!(report["steps"][1]["outcome"], "failed");
    assert_eq!(report["steps"][5]["outcome"], "not_run");
}

#[test]
fn a_config_file_that_does_not_load_abandons_at_once_and_status_still_reads_the_report() {
    let emu = emulator();
    let name = unique("badconf");
    emu.seed(json!({"name": name, "pool_size": 1, "lifecycle_hook": true}));
    let inst = emu.launch_one(json!({"group": name}));
    let state = tempfile::tempdir().expect("state");
    let broken = "[eip]\npooll = \"web\"\n";
    let run = Embark::new(emu, &inst)
        .config(broken)
        .env("EMBARK_STATE_DIR", state.path())
        .run(&["boot"])
        .expect_code(2);
    assert_has(&run.stderr(), "did you mean `pool`");
    // The group replaces the instance now, not at the hook's timeout.
    assert_eq!(the_action(emu, &inst.id)["result"], "ABANDON");
    let status = Embark::new(emu, &inst)
        .config(broken)
        .env("EMBARK_STATE_DIR", state.path())
        .run(&["status", "--json"]);
    let report: Value = serde_json::from_str(&status.stdout()).expect("status JSON");
    assert_eq!(report["instance_id"], inst.id.as_str(), "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("pooll"), "{error}");
    assert!(error.contains("ABANDON"), "{error}");
}

/// Issue "What a new operator still trips on", item 1: the release fails (nothing published) while
/// the address is being bound; the boot must not report the EIP step as not run when it bound one.
#[test]
fn a_failing_release_does_not_hide_an_address_bound_beside_it() {
    let emu = emulator();
    let name = unique("hide");
    emu.seed(
        json!({"name": name, "pool_size": 2, "lifecycle_hook": false,
                    "group_tags": {"embark:eip-pool": name,
                                   "embark:release": format!("s3://{name}-deploy/empty")}}),
    );
    let inst = emu.launch_one(json!({"group": name}));
    emu.fault(
        json!({"service": "ec2", "operation": "AssociateAddress", "latency_ms": 800,
                     "params": {"InstanceId": inst.id}}),
    );
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let config = format!(
        "[release]\nroot = \"{}\"\n[health]\non_failure = \"keep\"\n",
        root.path().display()
    );
    let run = on(emu, &inst, state.path(), &config)
        .run(&["boot"])
        .expect_code(1);
    assert_has(&run.stderr(), "no release has been published");
    let bound: Vec<Value> = emu
        .addresses(&name)
        .into_iter()
        .filter(|a| a["instance_id"] == inst.id.as_str())
        .collect();
    assert_eq!(bound.len(), 1, "{bound:?}");
    let report = status_json(on(emu, &inst, state.path(), &config));
    let eip = &report["steps"][1];
    assert_eq!(eip["name"], "eip", "{report}");
    assert_eq!(eip["outcome"], "ok", "{report}");
    let ip = bound[0]["public_ip"].as_str().expect("public ip");
    assert_has(eip["detail"].as_str().unwrap_or_default(), ip);
    assert_eq!(report["steps"][3]["outcome"], "failed", "{report}");
}
