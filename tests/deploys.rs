//! A release's life on an instance and in the fleet (issue "A bad release never stays live"): prepare
//! hooks on the staged tree, validation after every switch, the instance's rollback, the fleet's.
//! The app is a local HTTP server answering with the status the live release's `health.txt` holds.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{
    assert_has, current_release, emulator, lines, wait_until, AppServer, Embark, Emulator, Fleet,
    Instance, Published, Running,
};
use serde_json::{json, Value};

/// Hooks that log what runs, one line each, to `log`: a switch hook and a failure hook.
fn logging_hooks(log: &Path) -> String {
    format!(
        r#"
[[release.hooks]]
run = ["sh", "-c", "echo switch $EMBARK_RELEASE previous=$EMBARK_PREVIOUS >> {log}"]
[[release.hooks]]
phase = "failure"
run = ["sh", "-c", "echo failure $EMBARK_FAILED_RELEASE now=$EMBARK_RELEASE >> {log}"]
"#,
        log = log.display()
    )
}

fn health(url: &str) -> String {
    format!("\n[health]\nurl = \"{url}\"\ntimeout = \"3s\"\nsuccesses = 2\n")
}

#[test]
fn a_release_that_fails_validation_is_rolled_back_its_hooks_rerun_and_it_is_not_retried() {
    let emu = emulator();
    let set = Published::new(emu, |t| {
        fs::write(t.join("index.php"), "<?php echo 1;").expect("write");
        fs::write(t.join("health.txt"), "200").expect("write");
    });
    let app = AppServer::new(Some(set.root.path()));
    let log = set.root.path().join("hooks.log");
    let extra = format!("{}{}", logging_hooks(&log), health(&app.url));
    let v1 = set.first.clone();
    let run = set.pull(emu, &extra).expect_code(0);
    assert_has(&run.stdout(), "validated in");

    fs::write(set.tree.path().join("health.txt"), "500").expect("write");
    let v2 = set.push(emu, "v2 answers 500");
    let run = set.pull(emu, &extra).expect_code(1);
    let err = run.stderr();
    assert_has(
        &err,
        &format!("rolled back to {v1}: release {v2} failed validation"),
    );
    assert_has(&err, "HTTP 500");
    assert_eq!(
        current_release(set.root.path()).as_deref(),
        Some(v1.as_str())
    );
    assert_eq!(
        lines(&log),
        [
            format!("switch {v1} previous="),
            format!("switch {v2} previous={v1}"),
            format!("switch {v1} previous={v2}"),
            format!("failure {v2} now={v1}"),
        ]
    );

    // Not tried again by a plain pull: it says why and when, and changes nothing.
    let run = set.pull(emu, &extra).expect_code(1);
    assert_has(&run.stderr(), &format!("release {v2} failed here at"));
    assert_has(&run.stderr(), "--retry-failed");
    assert_eq!(lines(&log).len(), 4);

    // The operator asks: it is tried once more (and still fails, so it is rolled back again).
    let run = Embark::new(emu, &set.inst)
        .config(&format!(
            "[release]\nroot = \"{}\"\n{extra}",
            set.root.path().display()
        ))
        .run(&["release", "pull", "--retry-failed"])
        .expect_code(1);
    assert_has(&run.stderr(), &format!("rolled back to {v1}"));
    assert_eq!(
        current_release(set.root.path()).as_deref(),
        Some(v1.as_str())
    );

    // A newer release that answers deploys normally.
    fs::write(set.tree.path().join("health.txt"), "200").expect("write");
    let v3 = set.push(emu, "v3 is fixed");
    let run = set.pull(emu, &extra).expect_code(0);
    assert_has(&run.stdout(), &format!("switched current to release {v3}"));
    assert_eq!(
        current_release(set.root.path()).as_deref(),
        Some(v3.as_str())
    );
}

#[test]
fn a_failing_prepare_hook_switches_nothing_and_runs_in_the_staged_tree() {
    let emu = emulator();
    let set = Published::new(emu, |t| {
        fs::write(t.join("artisan"), "#!/usr/bin/env php").expect("write");
    });
    let log = set.root.path().join("prepare.log");
    let extra = format!(
        r#"
[[release.hooks]]
phase = "prepare"
run = ["sh", "-c", "echo $(pwd) $EMBARK_RELEASE_DIR previous=$EMBARK_PREVIOUS live=$(readlink {link} || echo none) >> {log}; test -f artisan"]
"#,
        link = set.root.path().join("current").display(),
        log = log.display()
    );
    let v1 = set.first.clone();
    set.pull(emu, &extra).expect_code(0);
    let staged = set.root.path().join("releases").join(&v1);
    assert_eq!(
        lines(&log),
        [format!(
            "{} {} previous= live=none",
            staged.display(),
            staged.display()
        )]
    );

    fs::remove_file(set.tree.path().join("artisan")).expect("rm");
    let v2 = set.push(emu, "no artisan");
    let run = set.pull(emu, &extra).expect_code(1);
    assert_has(&run.stderr(), &format!("release {v2} was not switched to"));
    assert_has(&run.stderr(), "prepare hook");
    assert_eq!(
        current_release(set.root.path()).as_deref(),
        Some(v1.as_str())
    );
    let staged2 = set.root.path().join("releases").join(&v2);
    assert_eq!(
        lines(&log)[1],
        format!(
            "{} {} previous={v1} live=releases/{v1}",
            staged2.display(),
            staged2.display()
        )
    );
    // Recorded as failed here: not prepared again at the next pull.
    let run = set.pull(emu, &extra).expect_code(1);
    assert_has(&run.stderr(), &format!("release {v2} failed here at"));
    assert_eq!(lines(&log).len(), 2);
}

#[test]
fn a_failing_switch_hook_with_nothing_to_go_back_to_stays_due_until_it_succeeds() {
    let emu = emulator();
    let set = Published::new(emu, |t| {
        fs::write(t.join("index.php"), "<?php").expect("write");
    });
    let gate = set.root.path().join("hook-may-pass");
    let log = set.root.path().join("hook.log");
    let extra = format!(
        "[[release.hooks]]\nrun = [\"sh\", \"-c\", \"test -f {gate} && echo ran $EMBARK_RELEASE >> {log}\"]\n",
        gate = gate.display(),
        log = log.display()
    );
    let v1 = set.first.clone();
    let run = set.pull(emu, &extra).expect_code(1);
    assert_has(&run.stderr(), "exited with status 1");
    assert_eq!(
        current_release(set.root.path()).as_deref(),
        Some(v1.as_str())
    );
    // The hook is still due: the next pull runs it (and it fails again), never "nothing changed".
    let run = set.pull(emu, &extra).expect_code(1);
    assert!(
        !run.stdout().contains("nothing changed"),
        "{}",
        run.stdout()
    );
    fs::write(&gate, "").expect("write");
    set.pull(emu, &extra).expect_code(0);
    assert_eq!(lines(&log), [format!("ran {v1}")]);
    let run = set.pull(emu, &extra).expect_code(0);
    assert_has(&run.stdout(), "nothing changed");
}

struct Agent {
    inst: Instance,
    root: tempfile::TempDir,
    _app: AppServer,
    running: Running,
}

fn push(emu: &Emulator, fleet: &Fleet, tree: &Path, status: &str) -> String {
    fs::write(tree.join("health.txt"), status).expect("write");
    fs::write(tree.join("index.php"), format!("<?php // {status}")).expect("write");
    emu.push_dir(tree, &fleet.source, Some(status))
}

/// An agent whose app answers what its live release says (`serves_release`), or always 200.
fn start(emu: &Emulator, fleet: &Fleet, inst: Instance, serves_release: bool) -> Agent {
    let root = tempfile::tempdir().expect("root");
    let app = AppServer::new(serves_release.then_some(root.path()));
    let config = format!(
        "[release]\nroot = \"{}\"\n[watch]\ninterval = \"1s\"\nbarrier = \"30s\"\n{}[notify]\nerror_topic = \"{}\"\n",
        root.path().display(),
        health(&app.url),
        fleet.seed["topics"]["error"]["topic_arn"]
            .as_str()
            .expect("topic")
    );
    let running = Embark::new(emu, &inst)
        .config(&config)
        .spawn(&["release", "watch"]);
    Agent {
        inst,
        root,
        _app: app,
        running,
    }
}

fn all_on(agents: &[Agent], id: &str) -> bool {
    wait_until(Duration::from_secs(60), || {
        agents
            .iter()
            .all(|a| current_release(a.root.path()).as_deref() == Some(id))
    })
}

#[test]
fn one_instance_failing_validation_brings_the_fleet_back_and_a_newer_push_deploys() {
    let emu = emulator();
    let fleet = emu.fleet("bad");
    let tree = tempfile::tempdir().expect("tree");
    let v1 = push(emu, &fleet, tree.path(), "200");
    let instances = emu.launch(json!({"group": fleet.name, "count": 3}));
    let agents: Vec<Agent> = instances
        .into_iter()
        .enumerate()
        .map(|(i, inst)| start(emu, &fleet, inst, i == 0))
        .collect();
    assert!(all_on(&agents, &v1), "the fleet never reached {v1}");

    // Only the first instance's app fails on v2.
    let v2 = push(emu, &fleet, tree.path(), "500");
    let record_key = format!("app/failed/{v2}.json");
    assert!(
        wait_until(Duration::from_secs(60), || emu
            .s3_keys(&fleet.bucket)
            .contains(&record_key)),
        "no instance recorded {v2} as failed"
    );
    assert!(
        all_on(&agents, &v1),
        "the fleet did not come back to {v1} after {v2} failed"
    );
    let record: Value =
        serde_json::from_slice(&emu.s3_get(&fleet.bucket, &record_key)).expect("failure record");
    assert_eq!(record["instance"], agents[0].inst.id.as_str(), "{record}");
    assert_eq!(record["rolled_back_to"], v1.as_str(), "{record}");
    let pointer: Value =
        serde_json::from_slice(&emu.s3_get(&fleet.bucket, "app/current")).expect("pointer");
    assert_eq!(pointer["release"], v1.as_str(), "{pointer}");
    assert_eq!(pointer["rollback_of"], v2.as_str(), "{pointer}");
    // `release list` says so.
    let list = emu
        .workstation()
        .run(&["release", "list", "--from", &fleet.source, "--json"])
        .expect_code(0)
        .json();
    let listed = list["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .find(|r| r["release"] == v2.as_str())
        .cloned()
        .expect("v2 listed");
    assert_eq!(listed["failed"]["instance"], agents[0].inst.id.as_str());
    // One notification of the failure, from the instance that failed.
    let url = fleet.seed["topics"]["error"]["queue_url"]
        .as_str()
        .expect("queue");
    let messages = match emu.control("GET", &format!("messages?queue_url={url}"), json!({})) {
        Value::Array(v) => v,
        other => panic!("messages: {other}"),
    };
    let about_v2: Vec<&Value> = messages
        .iter()
        .filter(|m| {
            m.to_string()
                .contains(&format!("release {v2} failed validation"))
        })
        .collect();
    assert_eq!(about_v2.len(), 1, "{messages:?}");

    // The pointer back on v2 (as if the failing instance could not move it): no agent deploys it
    // again, and a new instance installs the release the failing one went back to, saying so.
    let sha2 = embark::release::format::sha256_hex(
        &emu.s3_get(&fleet.bucket, &format!("app/releases/{v2}/manifest.json")),
    );
    let mut bad = pointer.clone();
    bad["release"] = json!(v2);
    bad["manifest_sha256"] = json!(sha2);
    bad.as_object_mut().expect("pointer").remove("rollback_of");
    emu.s3_put(
        &fleet.bucket,
        "app/current",
        serde_json::to_vec(&bad).expect("json"),
    );
    let fresh = emu.launch_one(json!({"group": fleet.name}));
    let fresh_root = tempfile::tempdir().expect("root");
    let run = Embark::new(emu, &fresh)
        .config(&format!(
            "[release]\nroot = \"{}\"\n",
            fresh_root.path().display()
        ))
        .run(&["release", "pull"])
        .expect_code(0);
    assert_has(
        &run.stderr(),
        &format!("release {v2} failed on {}", agents[0].inst.id),
    );
    assert_eq!(
        current_release(fresh_root.path()).as_deref(),
        Some(v1.as_str())
    );
    std::thread::sleep(Duration::from_secs(3));
    for a in &agents {
        assert_eq!(current_release(a.root.path()).as_deref(), Some(v1.as_str()));
    }

    // A newer push deploys to every instance.
    let v3 = push(emu, &fleet, tree.path(), "200");
    assert!(all_on(&agents, &v3), "the fleet never reached {v3}");
    for a in &agents {
        a.running.terminate();
    }
    for a in agents {
        let run = a.running.wait();
        assert_eq!(run.code(), 0, "agent exit\n{}", run.stderr());
    }
}

#[test]
fn shared_paths_survive_deploys_and_a_rollback_and_hostile_names_are_refused() {
    let emu = emulator();
    let set = Published::new(emu, |t| {
        fs::create_dir_all(t.join("public/uploads")).expect("mkdir");
        fs::write(t.join("public/uploads/logo.png"), "logo").expect("write");
        fs::write(t.join(".env"), "APP_KEY=shipped").expect("write");
        fs::write(t.join("health.txt"), "200").expect("write");
    });
    let app = AppServer::new(Some(set.root.path()));
    let extra = format!(
        "shared_dirs = [\"public/uploads\"]\nshared_files = [\".env\"]\n{}",
        health(&app.url)
    );
    set.pull(emu, &extra).expect_code(0);
    let shared = set.root.path().join("shared");
    assert_eq!(
        fs::read_to_string(shared.join("public/uploads/logo.png")).expect("seeded"),
        "logo"
    );
    assert_eq!(
        fs::read_to_string(shared.join(".env")).expect("seeded"),
        "APP_KEY=shipped"
    );
    fs::write(shared.join("public/uploads/user.jpg"), "upload").expect("write");
    fs::write(shared.join(".env"), "APP_KEY=real").expect("write");
    let live = set.root.path().join("current");
    for i in 2..=4 {
        fs::write(set.tree.path().join("index.php"), format!("<?php // {i}")).expect("write");
        let id = set.push(emu, &format!("v{i}"));
        set.pull(emu, &extra).expect_code(0);
        assert_eq!(
            current_release(set.root.path()).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            fs::read_to_string(live.join("public/uploads/user.jpg")).expect("upload"),
            "upload"
        );
        assert_eq!(
            fs::read_to_string(live.join(".env")).expect(".env"),
            "APP_KEY=real"
        );
    }
    // Already current: the linked paths are not a "tree that differs".
    let run = set.pull(emu, &extra).expect_code(0);
    assert_has(&run.stdout(), "nothing changed");
    // A release that fails validation is rolled back; the uploads are still served.
    fs::write(set.tree.path().join("health.txt"), "500").expect("write");
    set.push(emu, "bad");
    set.pull(emu, &extra).expect_code(1);
    assert_eq!(
        fs::read_to_string(live.join("public/uploads/user.jpg")).expect("upload"),
        "upload"
    );

    for bad in [
        "shared_dirs = [\"/var/www/uploads\"]",
        "shared_dirs = [\"../outside\"]",
        "shared_dirs = [\"public/../..\"]",
        "shared_dirs = [\".\"]",
        "shared_files = [\"\"]",
        "shared_dirs = [\"public\"]\nshared_files = [\"public/.env\"]",
        &format!(
            "shared_root = \"{}\"",
            set.root.path().join("releases/x").display()
        ),
    ] {
        let run = set.pull(emu, bad).expect_code(2);
        assert_has(&run.stderr(), "shared_");
    }
    assert_eq!(
        fs::read_to_string(live.join("public/uploads/user.jpg")).expect("upload"),
        "upload"
    );
}

#[test]
fn a_rollback_killed_at_any_point_is_completed_by_the_next_run() {
    let emu = emulator();
    let set = Published::new(emu, |t| {
        fs::write(t.join("health.txt"), "200").expect("write");
    });
    let app = AppServer::new(Some(set.root.path()));
    let dir = set.root.path();
    let (log, kill_switch, kill_failure) = (
        dir.join("hooks.log"),
        dir.join("kill-in-switch-hook"),
        dir.join("kill-in-failure-hook"),
    );
    let v1 = set.first.clone();
    // Each kill file makes its hook SIGKILL embark once (the hook's parent), mid-rollback.
    let extra = format!(
        r#"
[[release.hooks]]
run = ["sh", "-c", "if [ $EMBARK_RELEASE = {v1} ] && [ -f {ks} ]; then rm {ks}; kill -9 $PPID; sleep 5; fi; echo switch $EMBARK_RELEASE >> {log}"]
[[release.hooks]]
phase = "failure"
run = ["sh", "-c", "if [ -f {kf} ]; then rm {kf}; kill -9 $PPID; sleep 5; fi; echo failure $EMBARK_FAILED_RELEASE >> {log}"]
{health}"#,
        ks = kill_switch.display(),
        kf = kill_failure.display(),
        log = log.display(),
        health = health(&app.url)
    );
    set.pull(emu, &extra).expect_code(0);
    fs::write(set.tree.path().join("health.txt"), "500").expect("write");
    let v2 = set.push(emu, "bad");
    let state = || fs::read_to_string(dir.join(".embark/state.json")).expect("state");

    // Killed while the previous release's switch hooks run again (the link is back on v1).
    fs::write(&kill_switch, "").expect("write");
    let run = set.pull(emu, &extra);
    assert_ne!(run.code(), 0, "{}", run.stderr());
    assert_eq!(current_release(dir).as_deref(), Some(v1.as_str()));
    assert_has(&state(), "rollback");
    let run = set.pull(emu, &extra).expect_code(1);
    assert_has(&run.stderr(), &format!("release {v2} failed here at"));
    assert_eq!(current_release(dir).as_deref(), Some(v1.as_str()));
    assert!(!state().contains("rollback"), "{}", state());
    assert_eq!(
        lines(&log)[lines(&log).len() - 2..],
        [format!("switch {v1}"), format!("failure {v2}")]
    );

    // Killed in the failure hook: the next run runs it (at least once) and clears the record.
    fs::write(&kill_failure, "").expect("write");
    let run = Embark::new(emu, &set.inst)
        .config(&format!("[release]\nroot = \"{}\"\n{extra}", dir.display()))
        .run(&["release", "pull", "--retry-failed"]);
    assert_ne!(run.code(), 0, "{}", run.stderr());
    assert_eq!(current_release(dir).as_deref(), Some(v1.as_str()));
    assert_has(&state(), "rollback");
    set.pull(emu, &extra).expect_code(1);
    assert!(!state().contains("rollback"), "{}", state());
    assert_eq!(lines(&log).last(), Some(&format!("failure {v2}")));
    assert_eq!(current_release(dir).as_deref(), Some(v1.as_str()));
}

#[test]
fn hook_output_is_relayed_as_json_lines_and_a_failure_quotes_its_stderr() {
    let emu = emulator();
    let set = Published::new(emu, |t| {
        fs::write(t.join("index.php"), "<?php").expect("write");
    });
    let extra = "[[release.hooks]]\nrun = [\"sh\", \"-c\", \"echo cache cleared; echo 'PHP Fatal error: config missing' >&2; exit 3\"]\n";
    let run = Embark::new(emu, &set.inst)
        .config(&format!(
            "[release]\nroot = \"{}\"\n{extra}",
            set.root.path().display()
        ))
        .run(&["--log-format", "json", "release", "pull"])
        .expect_code(1);
    let err = run.stderr();
    let lines: Vec<Value> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let hook_lines: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l.get("hook").is_some())
        .map(|l| {
            (
                l["stream"].as_str().unwrap_or_default(),
                l["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(hook_lines.contains(&("stdout", "cache cleared")), "{err}");
    assert!(
        hook_lines.contains(&("stderr", "PHP Fatal error: config missing")),
        "{err}"
    );
    let last = lines.last().expect("a final error");
    assert_has(
        last["message"].as_str().unwrap_or_default(),
        "exited with status 3; its stderr ended with: PHP Fatal error: config missing",
    );
}
