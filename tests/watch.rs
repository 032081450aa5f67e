//! The deploy agent (`release watch`), the fleet barrier, rollback, the pull-deploy layout (issue 7).

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    assert_has, current_release, emulator, noise, unique, wait_until, Embark, Emulator, Fleet,
    Instance, Running,
};
use serde_json::{json, Value};

/// A group without a launching hook (instances start InService) and its release bucket.
fn fleet(emu: &Emulator) -> Fleet {
    emu.fleet("fleet")
}

impl Fleet {
    fn push(&self, emu: &Emulator, tree: &Path, version: &str) -> String {
        fs::write(
            tree.join("version.php"),
            format!("<?php return '{version}';"),
        )
        .expect("write");
        let run = emu
            .workstation()
            .run(&[
                "release",
                "push",
                tree.to_str().expect("utf-8"),
                "--to",
                &self.source,
            ])
            .expect_code(0);
        run.stdout()
            .split_whitespace()
            .nth(2)
            .expect("id")
            .to_string()
    }

    fn errors(&self, emu: &Emulator) -> Vec<Value> {
        let url = self.seed["topics"]["error"]["queue_url"]
            .as_str()
            .expect("queue");
        match emu.control("GET", &format!("messages?queue_url={url}"), json!({})) {
            Value::Array(v) => v,
            other => panic!("messages: {other}"),
        }
    }
}

/// One instance with its agent running.
struct Agent {
    inst: Instance,
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    running: Running,
}

impl Agent {
    /// `embark status --json` on this agent's instance: the last boot (none here) and the last deploy.
    fn last_deploy(&self, emu: &Emulator) -> Value {
        Embark::new(emu, &self.inst)
            .env("EMBARK_STATE_DIR", self.state.path())
            .run(&["status", "--json"])
            .expect_code(0)
            .json()["last_deploy"]
            .clone()
    }
}

fn config(root: &Path, fleet: &Fleet, barrier: &str, policy: &str) -> String {
    format!(
        "[release]\nroot = \"{}\"\n[watch]\ninterval = \"1s\"\nbarrier = \"{barrier}\"\non_barrier_timeout = \"{policy}\"\n[notify]\nerror_topic = \"{}\"\n",
        root.display(),
        fleet.seed["topics"]["error"]["topic_arn"].as_str().expect("topic")
    )
}

fn start(emu: &Emulator, fleet: &Fleet, inst: Instance, barrier: &str, policy: &str) -> Agent {
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let running = Embark::new(emu, &inst)
        .config(&config(root.path(), fleet, barrier, policy))
        .env("EMBARK_STATE_DIR", state.path())
        .spawn(&["release", "watch"]);
    Agent {
        inst,
        root,
        state,
        running,
    }
}

fn all_on(agents: &[Agent], id: &str, limit: Duration) -> bool {
    wait_until(limit, || {
        agents
            .iter()
            .all(|a| current_release(a.root.path()).as_deref() == Some(id))
    })
}

fn stop(agents: Vec<Agent>) {
    for a in &agents {
        a.running.terminate();
    }
    for a in agents {
        let run = a.running.wait();
        assert_eq!(run.code(), 0, "agent exit\n{}", run.stderr());
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[test]
fn three_agents_switch_only_when_all_are_ready_and_roll_back_together() {
    let emu = emulator();
    let fleet = fleet(emu);
    let tree = tempfile::tempdir().expect("tree");
    let v1 = fleet.push(emu, tree.path(), "v1");
    let instances = emu.launch(json!({"group": fleet.name, "count": 3}));
    let agents: Vec<Agent> = instances
        .into_iter()
        .map(|i| start(emu, &fleet, i, "60s", "switch"))
        .collect();
    assert!(
        all_on(&agents, &v1, Duration::from_secs(40)),
        "the fleet never reached {v1}"
    );

    let v2 = fleet.push(emu, tree.path(), "v2");
    assert!(
        all_on(&agents, &v2, Duration::from_secs(40)),
        "the fleet never reached {v2}"
    );

    // Every switch happened after the last ready marker was written.
    let markers: Vec<f64> = emu
        .s3_requests(&fleet.bucket, "PutObject")
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("/ready/{v2}/i-"))
        })
        .filter_map(|r| r["time"].as_f64())
        .collect();
    assert_eq!(markers.len(), 3, "{markers:?}");
    let last_marker = markers.iter().cloned().fold(0.0, f64::max);
    for a in &agents {
        let switched = fs::symlink_metadata(a.root.path().join("current"))
            .and_then(|m| m.modified())
            .map(seconds)
            .expect("link time");
        assert!(
            switched > last_marker,
            "{} switched at {switched}, before the last marker at {last_marker}",
            a.inst.id
        );
    }
    // The deploy is in each agent's report, step by step.
    let report = agents[0].last_deploy(emu);
    assert_eq!(report["status"], "done", "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(steps, ["stage", "barrier", "switch"]);
    assert_has(
        report["steps"][1]["detail"].as_str().unwrap_or_default(),
        "is ready",
    );
    // Each agent removed its marker of the old release, and the agent that wrote `_go` the old
    // barrier's shared objects (right after their switch: waited for, bounded).
    let old = format!("ready/{v1}/");
    let mut keys = Vec::new();
    let cleaned = wait_until(Duration::from_secs(15), || {
        keys = emu.s3_keys(&fleet.bucket);
        !keys.iter().any(|k| k.contains(&old))
    });
    assert!(cleaned, "{keys:?}");

    // Rollback: the source points back at v1, the fleet follows through the barrier.
    let run = emu
        .workstation()
        .run(&["release", "rollback", "--from", &fleet.source])
        .expect_code(0);
    assert_has(&run.stdout(), &format!("now points at {v1} (was {v2})"));
    assert!(
        all_on(&agents, &v1, Duration::from_secs(40)),
        "the fleet never rolled back"
    );
    stop(agents);
}

#[test]
fn a_stopped_agent_holds_the_barrier_until_its_deadline_then_the_policy_applies() {
    let emu = emulator();
    for policy in ["switch", "hold"] {
        let fleet = fleet(emu);
        let tree = tempfile::tempdir().expect("tree");
        let v1 = fleet.push(emu, tree.path(), "v1");
        let mut instances = emu.launch(json!({"group": fleet.name, "count": 3}));
        let silent = instances.pop().expect("three");
        let agents: Vec<Agent> = instances
            .into_iter()
            .map(|i| start(emu, &fleet, i, "3s", policy))
            .collect();
        // v1 itself goes through the barrier: the silent instance never writes its marker.
        let reached = all_on(&agents, &v1, Duration::from_secs(30));
        assert_eq!(reached, policy == "switch", "{policy}");
        if policy == "hold" {
            assert!(agents
                .iter()
                .all(|a| current_release(a.root.path()).is_none()));
        }
        let notes = fleet.errors(emu);
        let subject = format!(
            "barrier timeout, {}",
            if policy == "switch" {
                "switched"
            } else {
                "holding"
            }
        );
        assert!(
            notes.iter().any(
                |n| n["subject"].as_str().unwrap_or_default().contains(&subject)
                    && n["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&silent.id)
            ),
            "{policy}: {notes:?}"
        );
        stop(agents);
    }
}

#[test]
fn a_terminated_instance_never_blocks_a_deploy() {
    let emu = emulator();
    let fleet = fleet(emu);
    let tree = tempfile::tempdir().expect("tree");
    let v1 = fleet.push(emu, tree.path(), "v1");
    let instances = emu.launch(json!({"group": fleet.name, "count": 3}));
    let mut agents: Vec<Agent> = instances
        .into_iter()
        .map(|i| start(emu, &fleet, i, "120s", "hold"))
        .collect();
    assert!(all_on(&agents, &v1, Duration::from_secs(40)));
    let gone = agents.pop().expect("three");
    gone.running.terminate();
    let _ = gone.running.wait();
    emu.control("POST", "terminate", json!({"instance_id": gone.inst.id}));
    let v2 = fleet.push(emu, tree.path(), "v2");
    // Well inside the 120 s barrier: the terminated instance is not waited for.
    assert!(
        all_on(&agents, &v2, Duration::from_secs(60)),
        "blocked by a terminated instance"
    );
    stop(agents);
}

#[test]
fn a_failed_deploy_keeps_the_release_is_notified_once_and_the_next_one_deploys() {
    let emu = emulator();
    let fleet = fleet(emu);
    let tree = tempfile::tempdir().expect("tree");
    let v1 = fleet.push(emu, tree.path(), "v1");
    let inst = emu.launch_one(json!({"group": fleet.name}));
    let agent = start(emu, &fleet, inst, "10s", "switch");
    assert!(all_on(
        std::slice::from_ref(&agent),
        &v1,
        Duration::from_secs(30)
    ));

    fs::write(tree.path().join("broken.php"), "<?php // v2").expect("write");
    let sha = embark::release::format::sha256_hex(b"<?php // v2");
    // The object is corrupt before the release exists: the push sees the key and does not upload it.
    emu.s3_put(
        &fleet.bucket,
        &format!("app/objects/{sha}"),
        b"<?php // evil".to_vec(),
    );
    let v2 = fleet.push(emu, tree.path(), "v2");
    // Several polls go by; the agent stays on v1 and notifies once.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        current_release(agent.root.path()).as_deref(),
        Some(v1.as_str())
    );
    let notes: Vec<Value> = fleet
        .errors(emu)
        .into_iter()
        .filter(|n| {
            n["subject"]
                .as_str()
                .unwrap_or_default()
                .contains("deploy failed")
        })
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_has(
        notes[0]["message"].as_str().unwrap_or_default(),
        "does not match its sha256",
    );
    assert!(!agent.root.path().join("releases").join(&v2).exists());
    let report = agent.last_deploy(emu);
    assert_eq!(report["status"], "error", "{report}");
    assert_eq!(report["steps"][0]["name"], "stage");
    assert_eq!(report["steps"][0]["outcome"], "failed");

    fs::remove_file(tree.path().join("broken.php")).expect("rm");
    let v3 = fleet.push(emu, tree.path(), "v3");
    assert!(all_on(
        std::slice::from_ref(&agent),
        &v3,
        Duration::from_secs(30)
    ));
    stop(vec![agent]);
}

/// A release in the pull-deploy layout, written with plain puts as its push script does.
fn legacy_release(emu: &Emulator, bucket: &str, stamp: &str, files: &[(&str, &str)], count: usize) {
    for (path, body) in files {
        emu.s3_put(
            bucket,
            &format!("shop/{stamp}/{path}"),
            body.as_bytes().to_vec(),
        );
    }
    let latest = format!("{stamp}\n1795698295\n{count}\n");
    emu.s3_put(bucket, "shop/latest-deploy", latest.into_bytes());
}

#[test]
fn the_pull_deploy_layout_is_pulled_watched_and_a_wrong_count_refused() {
    let emu = emulator();
    let bucket = unique("legacy");
    emu.bucket(&bucket);
    let files = [
        ("index.php", "<?php echo 1;"),
        ("lib/a.php", "<?php // a"),
        ("lib/b/c.php", "<?php"),
    ];
    legacy_release(emu, &bucket, "2026-11-20_10-00-00", &files, 3);
    let inst = emu.launch_one(json!({}));
    let root = tempfile::tempdir().expect("root");
    let conf = format!(
        "[release]\nsource = \"s3://{bucket}/shop\"\nformat = \"pull-deploy\"\nroot = \"{}\"\n[watch]\ninterval = \"1s\"\n",
        root.path().display()
    );
    let run = Embark::new(emu, &inst)
        .config(&conf)
        .run(&["release", "pull"])
        .expect_code(0);
    assert_has(
        &run.stdout(),
        "switched current to release 20261120T100000Z-",
    );
    let id = current_release(root.path()).expect("current");
    assert_eq!(
        fs::read_to_string(root.path().join(format!("releases/{id}/lib/b/c.php"))).expect("file"),
        "<?php"
    );

    // The agent picks up the next one.
    let running = Embark::new(emu, &inst)
        .config(&conf)
        .spawn(&["release", "watch"]);
    legacy_release(
        emu,
        &bucket,
        "2026-11-21_09-30-00",
        &[("index.php", "<?php echo 2;")],
        1,
    );
    assert!(wait_until(Duration::from_secs(30), || {
        current_release(root.path()).is_some_and(|c| c.starts_with("20261121T093000Z-"))
    }));
    running.terminate();
    assert_eq!(running.wait().code(), 0);

    // A count that does not match what is in S3 is refused.
    legacy_release(
        emu,
        &bucket,
        "2026-11-22_08-00-00",
        &[("index.php", "<?php echo 3;")],
        5,
    );
    let run = Embark::new(emu, &inst)
        .config(&conf)
        .run(&["release", "pull"])
        .expect_code(1);
    assert_has(&run.stderr(), "latest-deploy says 5 files");
    assert!(current_release(root.path()).is_some_and(|c| c.starts_with("20261121T093000Z-")));
}

#[test]
fn sigterm_during_staging_exits_promptly_and_the_next_start_resumes() {
    let emu = emulator();
    let fleet = fleet(emu);
    let tree = tempfile::tempdir().expect("tree");
    for i in 0..60 {
        fs::write(
            tree.path().join(format!("f{i}.php")),
            format!("<?php // {i}"),
        )
        .expect("write");
    }
    // 6 MiB that zstd cannot shrink: the bundle comes in more than one range.
    fs::write(tree.path().join("assets.bin"), noise(6 << 20, 3)).expect("write");
    let v1 = fleet.push(emu, tree.path(), "v1");
    let inst = emu.launch_one(json!({"group": fleet.name}));
    let root = tempfile::tempdir().expect("root");
    // Every range of the bundle takes 3 s to start arriving: the first one is asked for beside the
    // manifest, then the partial directory is made and the others are asked for, so the agent is
    // caught with its partial directory.
    let conf = config(root.path(), &fleet, "10s", "switch");
    emu.fault(
        json!({"service": "s3", "operation": "GetObject", "latency_ms": 3000,
                     "path": format!("/{}/app/releases/{v1}/bundle", fleet.bucket)}),
    );
    let mut running = Embark::new(emu, &inst)
        .config(&conf)
        .spawn(&["release", "watch"]);
    let staging = wait_until(Duration::from_secs(30), || {
        fs::read_dir(root.path().join("releases"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".partial-"))
    });
    assert!(staging, "the agent never started staging");
    running.terminate();
    assert!(
        wait_until(Duration::from_secs(5), || running.exited()),
        "the agent did not stop within 5 s of SIGTERM"
    );
    let run = running.wait();
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(current_release(root.path()), None);

    emu.control("DELETE", "faults", json!({}));
    let running = Embark::new(emu, &inst)
        .config(&conf)
        .spawn(&["release", "watch"]);
    assert!(wait_until(Duration::from_secs(30), || current_release(
        root.path()
    )
    .as_deref()
        == Some(v1.as_str())));
    running.terminate();
    assert_eq!(running.wait().code(), 0);
    let leftovers: Vec<String> = fs::read_dir(root.path().join("releases"))
        .expect("releases")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_instance_that_booted_onto_the_release_does_not_hold_the_barrier() {
    let emu = emulator();
    let fleet = fleet(emu);
    let tree = tempfile::tempdir().expect("tree");
    let v1 = fleet.push(emu, tree.path(), "v1");
    let mut instances = emu.launch(json!({"group": fleet.name, "count": 3}));
    let late = instances.pop().expect("three");
    let agents: Vec<Agent> = instances
        .into_iter()
        .map(|i| start(emu, &fleet, i, "120s", "hold"))
        .collect();
    // The third instance is InService without an agent: the first two wait for it at v1's barrier.
    std::thread::sleep(Duration::from_secs(3));
    assert!(agents
        .iter()
        .all(|a| current_release(a.root.path()).is_none()));
    // It boots onto v1 (pull, as `embark boot` does), then its agent starts: already current, it must
    // still write its marker, or the others would hold until their 120 s deadline.
    let root = tempfile::tempdir().expect("root");
    let conf = config(root.path(), &fleet, "120s", "hold");
    Embark::new(emu, &late)
        .config(&conf)
        .run(&["release", "pull"])
        .expect_code(0);
    let running = Embark::new(emu, &late)
        .config(&conf)
        .spawn(&["release", "watch"]);
    assert!(
        all_on(&agents, &v1, Duration::from_secs(30)),
        "held by an instance already on {v1}"
    );
    running.terminate();
    assert_eq!(running.wait().code(), 0);
    stop(agents);
}

/// The barrier at fleet scale (issue 16, item 3): 20 agents, Auto Scaling's Describe calls throttled
/// at 2 per second for the whole account. No call is throttled, every agent switches, and no agent
/// asks Auto Scaling more than 3 times for a deploy.
#[test]
fn twenty_agents_pass_the_barrier_under_an_auto_scaling_throttle_of_two_per_second() {
    // The throttle is the account's: an emulator of this test's own.
    let emu = &Emulator::start();
    let fleet = fleet(emu);
    let tree = tempfile::tempdir().expect("tree");
    let v1 = fleet.push(emu, tree.path(), "v1");
    emu.control(
        "POST",
        "throttle",
        json!({"service": "autoscaling", "rps": 2}),
    );
    let instances = emu.launch(json!({"group": fleet.name, "count": 20}));
    let agents: Vec<Agent> = instances
        .into_iter()
        .map(|i| start(emu, &fleet, i, "60s", "hold"))
        .collect();
    assert!(all_on(&agents, &v1, Duration::from_secs(90)), "v1");
    let v2 = fleet.push(emu, tree.path(), "v2");
    let all = all_on(&agents, &v2, Duration::from_secs(90));
    let throttled: Vec<Value> = emu
        .requests()
        .into_iter()
        .filter(|r| r["service"] == "autoscaling" && r["status"] != 200)
        .collect();
    // The report is written once the switch's clean-up is done: wait for every agent's.
    let mut reports: Vec<Value> = Vec::new();
    wait_until(Duration::from_secs(30), || {
        reports = agents.iter().map(|a| a.last_deploy(emu)).collect();
        reports
            .iter()
            .all(|r| r["command"].as_str().is_some_and(|c| c.contains(&v2)))
    });
    stop(agents);
    assert!(all, "not every agent switched to {v2}");
    assert!(throttled.is_empty(), "throttled: {throttled:?}");
    for report in reports {
        assert_has(report["command"].as_str().unwrap_or_default(), &v2);
        let barrier = report["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "barrier"))
            .cloned()
            .unwrap_or_default();
        let detail = barrier["detail"].as_str().unwrap_or_default();
        let asked: u32 = detail
            .split("Auto Scaling asked ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(99);
        assert!(asked <= 3, "{detail}");
    }
}

#[test]
fn when_no_agent_can_write_go_the_waiting_agents_own_lists_switch_the_fleet() {
    // Every `_go` write of this fleet fails, as when the agent that saw the fleet ready dies before
    // writing it: the others must not wait for the barrier's deadline. (Its own emulator: other tests
    // clear the shared one's faults.)
    let emu = &Emulator::start();
    let fleet = fleet(emu);
    emu.fault(
        json!({"service": "s3", "operation": "PutObject", "status": 500,
                     "code": "InternalError", "count": 100_000,
                     "path": format!("/{}/app/ready/*/_go-*", fleet.bucket)}),
    );
    let tree = tempfile::tempdir().expect("tree");
    let v1 = fleet.push(emu, tree.path(), "v1");
    let mut instances = emu.launch(json!({"group": fleet.name, "count": 3}));
    // One agent first, until its marker is there: its own list saw only itself, so it waits, and only
    // its later lists can see the fleet ready (the others find the fleet ready when they list).
    let first = start(emu, &fleet, instances.remove(0), "300s", "hold");
    let marker = format!("app/ready/{v1}/{}", first.inst.id);
    let waiting = wait_until(Duration::from_secs(30), || {
        emu.s3_keys(&fleet.bucket).contains(&marker)
    });
    let mut agents = vec![first];
    agents.extend(
        instances
            .into_iter()
            .map(|i| start(emu, &fleet, i, "300s", "hold")),
    );
    // Far inside the 300 s deadline (with "hold", a deadline would switch nobody).
    let all = all_on(&agents, &v1, Duration::from_secs(90));
    let go_writes = emu.s3_requests(&fleet.bucket, "PutObject");
    let keys = emu.s3_keys(&fleet.bucket);
    stop(agents);
    assert!(waiting, "the first agent wrote no marker");
    assert!(all, "the fleet waited for a _go nobody could write");
    assert!(
        go_writes
            .iter()
            .any(|r| r["path"].as_str().is_some_and(|p| p.contains("/_go-")) && r["status"] == 500),
        "no _go write was tried: {go_writes:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("/_go-")), "{keys:?}");
}
