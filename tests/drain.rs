//! `embark drain`: leaving the fleet on scale-in, a Spot notice or a shutdown (issue 17).

mod common;

use std::fs;
use std::path::Path;

use common::{assert_has, emulator, unique, wait_until, Embark, Emulator, Instance};
use serde_json::{json, Value};

struct Fleet {
    name: String,
    seed: Value,
    arn: String,
    dir: tempfile::TempDir,
}

fn fleet(emu: &Emulator) -> Fleet {
    let name = unique("drain");
    let seed = emu.seed(json!({
        "name": name, "pool_size": 1, "lifecycle_hook": false, "terminating_hook": true,
        "group_tags": {"embark:require": "none"},
    }));
    let arn = emu.control("POST", "target-groups", json!({"name": unique("tg")}))["arn"]
        .as_str()
        .expect("arn")
        .to_string();
    Fleet {
        name,
        seed,
        arn,
        dir: tempfile::tempdir().expect("dir"),
    }
}

impl Fleet {
    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("hooks.log")
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[health]\ntarget_groups = [\"{arn}\"]\n[notify]\nsuccess_topic = \"{ok}\"\n\
             [drain]\ndeadline = \"30s\"\n\
             [[drain.hooks]]\nrun = [\"/bin/sh\", \"-c\", \"echo first $EMBARK_DRAIN_REASON >> {log}\"]\n\
             [[drain.hooks]]\nrun = [\"/bin/sh\", \"-c\", \"echo second >> {log}\"]\n{extra}",
            arn = self.arn,
            ok = self.seed["topics"]["ok"]["topic_arn"].as_str().expect("topic"),
            log = self.log().display(),
        )
    }

    fn targets(&self, emu: &Emulator) -> Vec<String> {
        match emu.control("GET", &format!("targets?arn={}", self.arn), json!({})) {
            Value::Array(v) => v
                .iter()
                .filter_map(|t| t["id"].as_str().map(str::to_string))
                .collect(),
            other => panic!("targets: {other}"),
        }
    }

    fn messages(&self, emu: &Emulator) -> Vec<Value> {
        let url = self.seed["topics"]["ok"]["queue_url"]
            .as_str()
            .expect("queue");
        match emu.control("GET", &format!("messages?queue_url={url}"), json!({})) {
            Value::Array(v) => v,
            other => panic!("messages: {other}"),
        }
    }

    fn on(&self, emu: &Emulator, inst: &Instance, state: &Path, extra: &str) -> Embark {
        Embark::new(emu, inst)
            .config(&self.config(extra))
            .env("EMBARK_STATE_DIR", state)
    }
}

fn terminating_actions(emu: &Emulator, id: &str) -> Vec<Value> {
    match emu.control("GET", "lifecycle", json!({})) {
        Value::Array(v) => v
            .into_iter()
            .filter(|a| {
                a["instance_id"] == id && a["transition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
            })
            .collect(),
        other => panic!("lifecycle: {other}"),
    }
}

fn hook_lines(f: &Fleet) -> Vec<String> {
    fs::read_to_string(f.log())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn scale_in_with_a_terminating_hook_drains_once_and_terminates() {
    let emu = emulator();
    let f = fleet(emu);
    let inst = emu.launch_one(json!({"group": f.name}));
    let state = tempfile::tempdir().expect("state");
    f.on(emu, &inst, state.path(), "")
        .run(&["health"])
        .expect_code(0);
    assert_eq!(f.targets(emu), vec![inst.id.clone()]);

    emu.control("POST", "terminate", json!({"instance_id": inst.id}));
    assert_eq!(
        emu.instance(&inst.id)["lifecycle_state"],
        "Terminating:Wait"
    );
    let run = f
        .on(emu, &inst, state.path(), "")
        .run(&["drain"])
        .expect_code(0);
    assert_has(&run.stdout(), "terminating action completed: CONTINUE");
    // Out of the target group before the action was completed; the hooks in order.
    assert!(f.targets(emu).is_empty(), "{:?}", f.targets(emu));
    let lines = hook_lines(&f);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("first the group is terminating"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "second");
    let actions = terminating_actions(emu, &inst.id);
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["result"], "CONTINUE");
    assert_ne!(
        emu.instance(&inst.id)["lifecycle_state"],
        "Terminating:Wait"
    );
    assert_eq!(f.messages(emu).len(), 1, "one notification");

    // A second trigger is a no-op: no hook, no lifecycle call, no notification.
    let again = f
        .on(emu, &inst, state.path(), "")
        .run(&["drain"])
        .expect_code(0);
    assert_has(&again.stdout(), "already drained");
    assert_eq!(hook_lines(&f).len(), 2);
    assert_eq!(terminating_actions(emu, &inst.id).len(), 1);
    assert!(f.messages(emu).is_empty());
    let status = f
        .on(emu, &inst, state.path(), "")
        .run(&["status", "--json"])
        .json();
    assert_eq!(status["last_drain"]["status"], "done", "{status}");
}

#[test]
fn plan_changes_nothing() {
    let emu = emulator();
    let f = fleet(emu);
    let inst = emu.launch_one(json!({"group": f.name}));
    let state = tempfile::tempdir().expect("state");
    f.on(emu, &inst, state.path(), "")
        .run(&["health"])
        .expect_code(0);
    emu.control("POST", "terminate", json!({"instance_id": inst.id}));
    let run = f
        .on(emu, &inst, state.path(), "")
        .run(&["drain", "--plan"])
        .expect_code(0);
    assert_has(&run.stdout(), "would deregister");
    assert_has(&run.stdout(), "would run");
    assert_has(&run.stdout(), "would complete the terminating action");
    assert_eq!(f.targets(emu), vec![inst.id.clone()]);
    assert!(hook_lines(&f).is_empty());
    assert!(terminating_actions(emu, &inst.id).is_empty());
    assert!(!state.path().join("drain.json").exists());
}

#[test]
fn a_hook_that_hangs_is_killed_at_its_timeout_and_the_drain_still_completes() {
    let emu = emulator();
    let f = fleet(emu);
    let inst = emu.launch_one(json!({"group": f.name}));
    let state = tempfile::tempdir().expect("state");
    emu.control("POST", "terminate", json!({"instance_id": inst.id}));
    let hang = "[[drain.hooks]]\nrun = [\"/bin/sleep\", \"60\"]\ntimeout = \"1s\"\n";
    let started = std::time::Instant::now();
    let run = f
        .on(emu, &inst, state.path(), hang)
        .run(&["drain"])
        .expect_code(1);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_has(&run.stderr(), "did not finish within 1s; killed");
    // The other hooks ran and the action was completed anyway: the instance leaves either way.
    assert_eq!(hook_lines(&f).len(), 2);
    assert_eq!(terminating_actions(emu, &inst.id)[0]["result"], "CONTINUE");
}

#[test]
fn a_spot_notice_makes_the_deploy_agent_drain_within_its_two_minutes() {
    let emu = emulator();
    let f = fleet(emu);
    let source = format!("s3://{}-deploy/app", f.name);
    emu.push_files(&source, &[("index.php", "<?php")]);
    let inst = emu.launch_one(json!({"group": f.name, "tags": {"embark:release": source}}));
    let state = tempfile::tempdir().expect("state");
    let root = tempfile::tempdir().expect("root");
    let extra = format!(
        "[release]\nroot = \"{}\"\n[watch]\ninterval = \"1s\"\nbarrier = \"2s\"\n",
        root.path().display()
    );
    f.on(emu, &inst, state.path(), &extra)
        .run(&["health"])
        .expect_code(0);
    assert_eq!(f.targets(emu), vec![inst.id.clone()]);
    let agent = f
        .on(emu, &inst, state.path(), &extra)
        .spawn(&["release", "watch"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !state.path().join("drain.json").exists(),
        "no notice yet, no drain"
    );
    emu.control(
        "POST",
        "spot",
        json!({"instance_id": inst.id, "action": "terminate"}),
    );
    let started = std::time::Instant::now();
    while !state.path().join("drain.json").exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no drain within 60 s of the notice"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let report: Value =
        serde_json::from_slice(&fs::read(state.path().join("drain.json")).expect("drain.json"))
            .expect("json");
    agent.terminate();
    let _ = agent.wait();
    let trigger = report["steps"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        trigger.contains("Spot interruption notice: terminate at"),
        "{report}"
    );
    assert_eq!(report["status"], "done", "{report}");
    assert!(f.targets(emu).is_empty(), "left the target group");
    assert_eq!(hook_lines(&f).len(), 2);
}

#[test]
fn the_drain_waits_for_its_targets_to_leave_draining() {
    // A private emulator: the draining time is emulator-wide.
    let emu = Emulator::start();
    let f = fleet(&emu);
    let inst = emu.launch_one(json!({"group": f.name}));
    let state = tempfile::tempdir().expect("state");
    f.on(&emu, &inst, state.path(), "")
        .run(&["health"])
        .expect_code(0);
    emu.control("POST", "draining", json!({"seconds": 3}));
    emu.control("POST", "terminate", json!({"instance_id": inst.id}));
    let run = f
        .on(&emu, &inst, state.path(), "")
        .run(&["drain"])
        .expect_code(0);
    assert_has(&run.stdout(), "waited for draining");
    let polls = emu
        .requests()
        .iter()
        .filter(|r| r["operation"] == "DescribeTargetHealth")
        .count();
    assert!(
        polls >= 2,
        "the drain looked again while the target was draining ({polls})"
    );
    // The action was completed after the target had left draining.
    let requests = emu.requests();
    let last_poll = requests
        .iter()
        .rposition(|r| r["operation"] == "DescribeTargetHealth");
    let completion = requests
        .iter()
        .position(|r| r["operation"] == "CompleteLifecycleAction");
    assert!(last_poll < completion, "{last_poll:?} {completion:?}");
}

#[test]
fn the_agent_recovers_when_imds_stops_accepting_its_token_early() {
    // The SDK's IMDS client keeps a token until its TTL (minus 120 s); an IMDS (or a proxy before it)
    // that forgets tokens sooner answers 401. The agent must fetch a new token, not fail for good: it
    // still sees the Spot notice that comes later.
    let emu = Emulator::start();
    let f = fleet(&emu);
    let source = format!("s3://{}-deploy/app", f.name);
    emu.push_files(&source, &[("index.php", "<?php")]);
    let inst = emu.launch_one(json!({"group": f.name, "tags": {"embark:release": source}}));
    let state = tempfile::tempdir().expect("state");
    let root = tempfile::tempdir().expect("root");
    let extra = format!(
        "[release]\nroot = \"{}\"\n[watch]\ninterval = \"1s\"\n",
        root.path().display()
    );
    emu.control("POST", "imds/token-lifetime", json!({"seconds": 0.5}));
    let agent = f
        .on(&emu, &inst, state.path(), &extra)
        .spawn(&["release", "watch"]);
    let refused = || {
        emu.requests()
            .iter()
            .filter(|r| r["service"] == "imds" && r["status"] == 401)
            .count()
    };
    // The notice comes only once IMDS has refused the agent's token: what is tested is that the
    // agent still sees it (with a new token), whatever the timing of its polls.
    let expired = wait_until(std::time::Duration::from_secs(30), || refused() >= 1);
    emu.control(
        "POST",
        "spot",
        json!({"instance_id": inst.id, "action": "terminate"}),
    );
    let started = std::time::Instant::now();
    while !state.path().join("drain.json").exists()
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    agent.terminate();
    let run = agent.wait();
    assert!(
        state.path().join("drain.json").exists(),
        "the notice was never seen:\n{}",
        run.stderr()
    );
    assert!(
        expired,
        "the emulator never refused an expired token (the agent polled IMDS too rarely?)"
    );
}

#[test]
fn going_into_a_warm_pool_gives_the_address_back_and_drains() {
    let emu = emulator();
    let f = fleet(emu);
    let inst = emu.launch_one(json!({"group": f.name}));
    let state = tempfile::tempdir().expect("state");
    f.on(emu, &inst, state.path(), "")
        .run(&["eip", "bind"])
        .expect_code(0);
    let held = |emu: &Emulator| {
        emu.addresses(&f.name)
            .iter()
            .filter(|a| a["instance_id"] == inst.id.as_str())
            .count()
    };
    assert_eq!(held(emu), 1);
    emu.control(
        "POST",
        &format!("instances/{}", inst.id),
        json!({"warmed": "Warmed:Stopped"}),
    );
    let run = f
        .on(emu, &inst, state.path(), "")
        .run(&["drain"])
        .expect_code(0);
    assert_has(&run.stdout(), "warm pool (Warmed:Stopped)");
    assert_eq!(held(emu), 0, "the address went back to the pool");
    assert_eq!(hook_lines(&f).len(), 2);
}
