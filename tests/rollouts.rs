//! Rollouts you can steer and see (issue 27): waves and canaries gated by validation, run-once hooks
//! with leases at the source, and `embark release status [--wait]`. Three agents of one group, each
//! with its app (a local HTTP server answering what its live release's `health.txt` says).

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{
    current_release, emulator, lines, wait_until, AppServer, Embark, Emulator, Fleet, Running,
};
use serde_json::{json, Value};

struct Agent {
    id: String,
    root: tempfile::TempDir,
    _app: AppServer,
    running: Running,
}

fn push(emu: &Emulator, fleet: &Fleet, tree: &Path, status: &str) -> String {
    fs::write(tree.join("health.txt"), status).expect("write");
    fs::write(tree.join("index.php"), format!("<?php // {status}")).expect("write");
    emu.push_dir(tree, &fleet.source, Some(status))
}

/// Three agents of the fleet's group, with `release` lines in `[release]` (and hooks after them)
/// and `watch` lines in `[watch]`; they start on what is pushed.
fn start(emu: &Emulator, fleet: &Fleet, watch: &str, release: &str) -> Vec<Agent> {
    emu.launch(json!({"group": fleet.name, "count": 3}))
        .into_iter()
        .map(|inst| {
            let root = tempfile::tempdir().expect("root");
            let app = AppServer::new(Some(root.path()));
            let config = format!(
                "[watch]\ninterval = \"1s\"\nbarrier = \"30s\"\n{watch}\n[health]\nurl = \"{}\"\ntimeout = \"3s\"\nsuccesses = 2\n[release]\nroot = \"{}\"\n{release}\n",
                app.url,
                root.path().display(),
            );
            let running = Embark::new(emu, &inst)
                .config(&config)
                .spawn(&["release", "watch"]);
            Agent {
                id: inst.id.clone(),
                root,
                _app: app,
                running,
            }
        })
        .collect()
}

fn all_on(agents: &[&Agent], id: &str) -> bool {
    wait_until(Duration::from_secs(60), || {
        agents
            .iter()
            .all(|a| current_release(a.root.path()).as_deref() == Some(id))
    })
}

/// Stops every agent and prints what each said (for a failing test's output).
fn show(agents: Vec<Agent>) {
    for agent in agents {
        agent.running.terminate();
        let run = agent.running.wait();
        eprintln!("---- agent {} ----\n{}", agent.id, run.stderr());
    }
}

fn deploy_report(agent: &Agent) -> Value {
    serde_json::from_slice(&fs::read(agent.running.state().join("deploy.json")).unwrap_or_default())
        .unwrap_or(Value::Null)
}

/// `release status` from a workstation (no instance metadata), with `args`.
fn status(emu: &Emulator, fleet: &Fleet, args: &[&str]) -> common::Run {
    let mut all = vec!["release", "status", "--from", fleet.source.as_str()];
    all.extend_from_slice(args);
    emu.workstation().run(&all)
}

fn go_puts(emu: &Emulator, fleet: &Fleet, id: &str) -> Vec<String> {
    emu.s3_requests(&fleet.bucket, "PutObject")
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .filter(|p| p.contains(&format!("/ready/{id}/_go-")))
        .collect()
}

#[test]
fn a_canary_that_fails_validation_is_the_only_instance_that_ever_switches() {
    let emu = emulator();
    let fleet = emu.fleet("canary");
    let tree = tempfile::tempdir().expect("tree");
    let v1 = push(emu, &fleet, tree.path(), "200");
    let agents = start(emu, &fleet, "rollout = [\"1\", \"100%\"]", "");
    let all: Vec<&Agent> = agents.iter().collect();
    assert!(all_on(&all, &v1), "the fleet never reached {v1}");
    // Every app would fail v2: only the canary finds out.
    let v2 = push(emu, &fleet, tree.path(), "500");
    let waited = status(emu, &fleet, &["--wait", "--timeout", "90s"]);
    assert_eq!(waited.code(), 1, "{}", waited.stderr());
    assert!(
        waited.stderr().contains(&format!("release {v2} failed")),
        "{}",
        waited.stderr()
    );
    assert!(all_on(&all, &v1), "the fleet is not back on {v1}");
    let record: Value =
        serde_json::from_slice(&emu.s3_get(&fleet.bucket, &format!("app/failed/{v2}.json")))
            .expect("failure record");
    let canary = record["instance"].as_str().expect("instance").to_string();
    // Only the barrier's go was ever written for v2: no wave 2.
    let gos = go_puts(emu, &fleet, &v2);
    assert!(
        gos.iter().all(|p| !p.contains("_go-w")),
        "a later wave got its go: {gos:?}"
    );
    // (Two agents that see the fleet ready at once may both write the barrier's go: the same one.)
    // None: the canary passed its barrier without a go (a barrier that timed out?): say why.
    if gos.is_empty() {
        show(agents);
        panic!("no go was written for {v2}, yet {canary} switched to it");
    }
    // Only the canary switched: the others' reports of v2 (written once they saw the pointer move
    // back) have no switch.
    assert!(
        wait_until(Duration::from_secs(30), || agents.iter().all(|a| {
            deploy_report(a)["command"]
                .as_str()
                .is_some_and(|c| c.contains(&v2))
        })),
        "not every agent reported on {v2}"
    );
    for agent in &agents {
        let report = deploy_report(agent);
        let switched = report["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "switch");
        if agent.id == canary {
            assert!(switched, "the canary's report: {report}");
            assert!(
                report["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("rolled back"),
                "{report}"
            );
        } else {
            assert!(!switched, "{} switched to {v2}: {report}", agent.id);
            let wave = report["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "wave")
                .cloned()
                .unwrap_or(Value::Null);
            assert_eq!(wave["outcome"], "skipped", "{report}");
            assert!(
                report["command"].as_str().unwrap_or("").contains(&v2),
                "{report}"
            );
        }
    }
    // The status objects say who failed, from one list.
    let shown = status(emu, &fleet, &["--json"]).expect_code(0).json();
    let failed: Vec<&Value> = shown["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{shown}");
    assert_eq!(failed[0]["instance"], canary.as_str());
    assert_eq!(failed[0]["deploying"], v2.as_str());
    assert_eq!(shown["pointer"]["rollback_of"], v2.as_str(), "{shown}");
}

/// When the `current` link under `root` was last switched.
fn switched_at(root: &Path) -> SystemTime {
    fs::symlink_metadata(root.join("current"))
        .and_then(|m| m.modified())
        .expect("current")
}

fn finished_at(report: &Value) -> SystemTime {
    humantime::parse_rfc3339(report["finished"].as_str().expect("finished")).expect("time")
}

#[test]
fn healthy_waves_switch_one_after_another_and_status_wait_sees_the_fleet_converge() {
    let emu = emulator();
    let fleet = emu.fleet("waves");
    let tree = tempfile::tempdir().expect("tree");
    let v1 = push(emu, &fleet, tree.path(), "200");
    let agents = start(
        emu,
        &fleet,
        "rollout = [\"1\", \"50%\", \"100%\"]\nbake = \"1s\"",
        "",
    );
    let all: Vec<&Agent> = agents.iter().collect();
    assert!(all_on(&all, &v1), "the fleet never reached {v1}");
    fs::write(tree.path().join("v2.txt"), "2").expect("write");
    let v2 = push(emu, &fleet, tree.path(), "200");
    let waited = status(emu, &fleet, &["--wait", "--timeout", "120s", "--json"]);
    assert_eq!(waited.code(), 0, "{}", waited.stderr());
    let shown = waited.json();
    assert_eq!(shown["summary"]["verdict"], "converged", "{shown}");
    assert_eq!(shown["summary"]["on_pointer"], 3, "{shown}");
    assert_eq!(shown["pointer"]["release"], v2.as_str());
    assert!(all_on(&all, &v2));
    // Three waves of one: each instance's report names its wave.
    let mut by_wave: Vec<(usize, &Agent, Value)> = agents
        .iter()
        .map(|a| {
            let report = deploy_report(a);
            let wave = report["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "wave")
                .and_then(|s| s["detail"].as_str())
                .and_then(|d| d.strip_prefix("wave "))
                .and_then(|d| d.split(' ').next())
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("no wave in {report}"));
            (wave, a, report)
        })
        .collect();
    by_wave.sort_by_key(|(wave, _, _)| *wave);
    assert_eq!(
        by_wave.iter().map(|(w, _, _)| *w).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Wave k+1 switched only after wave k's deploy (validation included) finished, and a bake later.
    for pair in by_wave.windows(2) {
        let (k, _, before) = &pair[0];
        let (_, next, _) = &pair[1];
        let done = finished_at(before);
        let switched = switched_at(next.root.path());
        assert!(
            switched >= done + Duration::from_secs(1),
            "wave {} switched at {:?}, before wave {k} validated (+ the bake) at {:?}",
            k + 1,
            switched,
            done
        );
    }
    // The wave gates were written once each.
    let gos = go_puts(emu, &fleet, &v2);
    assert_eq!(
        gos.iter().filter(|p| p.contains("/_go-w2-")).count(),
        1,
        "{gos:?}"
    );
    assert_eq!(
        gos.iter().filter(|p| p.contains("/_go-w3-")).count(),
        1,
        "{gos:?}"
    );
    // The JSON schema (docs/cli.md): one row per instance, each with what it serves and its state.
    for row in shown["instances"].as_array().expect("instances") {
        assert_eq!(row["serves"], v2.as_str(), "{row}");
        assert_eq!(row["state"], "validated", "{row}");
        assert!(row["wave"].is_array(), "{row}");
        assert!(row["heard_ago_s"].is_u64(), "{row}");
        assert_eq!(row["silent"], false, "{row}");
    }
    assert_eq!(shown["in_service_known"], true, "{shown}");
    // A human view: one line per instance, then the summary.
    let human = status(emu, &fleet, &[]).expect_code(0).stdout();
    assert!(
        human.contains(&format!("3/3 on {v2}, wave 3 of 3")),
        "{human}"
    );
    for agent in &agents {
        assert!(human.contains(&agent.id), "{human}");
    }
}

/// A prepare hook run once per deploy: it appends the release to `count` in a directory every
/// instance shares (EFS, in life), and, the first time, marks `first` and sleeps (to be killed).
fn once_hook(shared: &Path, body: &str) -> String {
    format!(
        "once_lease = \"3s\"\n[[release.hooks]]\nphase = \"prepare\"\nonce = true\ntimeout = \"60s\"\nrun = [\"sh\", \"-c\", '''cd {} && echo \"$PPID $$\" >> started && {body}''']\n",
        shared.display()
    )
}

#[test]
fn a_run_once_hook_runs_on_one_instance_per_deploy() {
    let emu = emulator();
    let fleet = emu.fleet("once");
    let tree = tempfile::tempdir().expect("tree");
    let shared = tempfile::tempdir().expect("shared");
    let v1 = push(emu, &fleet, tree.path(), "200");
    let agents = start(
        emu,
        &fleet,
        "",
        &once_hook(shared.path(), "echo $EMBARK_RELEASE >> count"),
    );
    let all: Vec<&Agent> = agents.iter().collect();
    if !all_on(&all, &v1) {
        show(agents);
        panic!("the fleet never reached {v1}");
    }
    fs::write(tree.path().join("v2.txt"), "2").expect("write");
    let v2 = push(emu, &fleet, tree.path(), "200");
    assert!(all_on(&all, &v2), "the fleet never reached {v2}");
    // The first deploy (v1, onto empty instances) ran it once too.
    assert_eq!(
        lines(&shared.path().join("count")),
        vec![v1.clone(), v2.clone()]
    );
    let outcome: Value = serde_json::from_slice(
        &emu.s3_get(
            &fleet.bucket,
            &emu.s3_keys(&fleet.bucket)
                .into_iter()
                .find(|k| k.starts_with(&format!("app/once/{v2}/")) && k.ends_with(".json"))
                .expect("an outcome"),
        ),
    )
    .expect("outcome");
    assert_eq!(outcome["ok"], true, "{outcome}");
    // A third deploy runs it once more (once per deploy, not once ever).
    fs::write(tree.path().join("v3.txt"), "3").expect("write");
    let v3 = push(emu, &fleet, tree.path(), "200");
    assert!(all_on(&all, &v3), "the fleet never reached {v3}");
    assert_eq!(lines(&shared.path().join("count")), vec![v1, v2, v3]);
}

#[test]
fn a_run_once_hook_whose_leader_is_killed_runs_again_elsewhere_and_the_fleet_proceeds() {
    let emu = emulator();
    let fleet = emu.fleet("oncekill");
    let tree = tempfile::tempdir().expect("tree");
    let shared = tempfile::tempdir().expect("shared");
    let v1 = push(emu, &fleet, tree.path(), "200");
    let hook = once_hook(
        shared.path(),
        "if [ -e armed ] && [ ! -e first ]; then touch first; sleep 60; fi; echo $EMBARK_RELEASE >> count",
    );
    let mut agents = start(emu, &fleet, "", &hook);
    let all: Vec<&Agent> = agents.iter().collect();
    assert!(all_on(&all, &v1));
    fs::write(shared.path().join("armed"), "").expect("arm");
    fs::write(tree.path().join("v2.txt"), "2").expect("write");
    let v2 = push(emu, &fleet, tree.path(), "200");
    let first = shared.path().join("first");
    assert!(
        wait_until(Duration::from_secs(60), || first.exists()),
        "the hook never started"
    );
    // The leader (the hook's parent) and the hook itself, killed outright.
    let started = lines(&shared.path().join("started"));
    assert_eq!(started.len(), 2, "v1's run, then v2's leader: {started:?}");
    let mut pids = started[1].split(' ');
    let leader: u32 = pids.next().and_then(|p| p.parse().ok()).expect("ppid");
    let hook_pid: i32 = pids.next().and_then(|p| p.parse().ok()).expect("pid");
    let at = agents
        .iter()
        .position(|a| a.running.pid() == leader)
        .expect("the leader is one of the agents");
    assert!(agents[at].running.kill(), "the leader had exited already");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hook_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let dead = agents.remove(at);
    let rest: Vec<&Agent> = agents.iter().collect();
    assert!(
        all_on(&rest, &v2),
        "the fleet did not proceed after the leader died"
    );
    assert_eq!(
        lines(&shared.path().join("count")),
        vec![v1.clone(), v2.clone()],
        "run again by exactly one other instance"
    );
    assert_eq!(lines(&shared.path().join("started")).len(), 3);
    assert_eq!(
        current_release(dead.root.path()).as_deref(),
        Some(v1.as_str())
    );
}

#[test]
fn a_failing_run_once_hook_switches_nobody() {
    let emu = emulator();
    let fleet = emu.fleet("oncefail");
    let tree = tempfile::tempdir().expect("tree");
    let shared = tempfile::tempdir().expect("shared");
    let v1 = push(emu, &fleet, tree.path(), "200");
    let agents = start(
        emu,
        &fleet,
        "",
        &once_hook(
            shared.path(),
            "if [ -e armed ]; then echo migrating >&2; echo ran >> count; exit 3; fi",
        ),
    );
    let all: Vec<&Agent> = agents.iter().collect();
    assert!(all_on(&all, &v1));
    fs::write(shared.path().join("armed"), "").expect("arm");
    let v2 = push(emu, &fleet, tree.path(), "200");
    let record_key = format!("app/failed/{v2}.json");
    assert!(
        wait_until(Duration::from_secs(60), || emu
            .s3_keys(&fleet.bucket)
            .contains(&record_key)),
        "the failure was not recorded"
    );
    // Give the others time to act on it: none switches, the hook ran once.
    std::thread::sleep(Duration::from_secs(3));
    for agent in &agents {
        assert_eq!(
            current_release(agent.root.path()).as_deref(),
            Some(v1.as_str())
        );
        assert!(!agent.root.path().join(format!("releases/{v2}/v2")).exists());
    }
    assert_eq!(lines(&shared.path().join("count")), vec!["ran".to_string()]);
    let shown = status(emu, &fleet, &["--json"]).expect_code(0).json();
    let failed = shown["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["state"] == "failed")
        .count();
    assert_eq!(failed, 3, "the leader and both that waited for it: {shown}");
    let outcome_key = emu
        .s3_keys(&fleet.bucket)
        .into_iter()
        .find(|k| k.starts_with(&format!("app/once/{v2}/")) && k.ends_with(".json"))
        .expect("an outcome");
    let outcome: Value =
        serde_json::from_slice(&emu.s3_get(&fleet.bucket, &outcome_key)).expect("outcome");
    assert_eq!(outcome["ok"], false);
    assert!(
        outcome["output"]
            .as_str()
            .unwrap_or("")
            .contains("migrating"),
        "{outcome}"
    );
}

#[test]
fn release_status_needs_a_source_and_a_wait_for_its_timeout() {
    let emu = emulator();
    let run = emu.workstation().run(&["release", "status"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("--from"), "{}", run.stderr());
    let run = emu.workstation().run(&[
        "release",
        "status",
        "--from",
        "s3://x/app",
        "--timeout",
        "1m",
    ]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
}
