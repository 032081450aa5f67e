//! `embark logs sync`: one CloudWatch stream per log file, the agent's configuration rewritten only
//! when the set of files changed (issue 18). The agent's reload is a script that counts its calls.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_has, emulator, Embark, Emulator, Instance};
use serde_json::{json, Value};

struct Setup {
    dir: tempfile::TempDir,
    inst: Instance,
}

impl Setup {
    fn new(emu: &Emulator, role: &str) -> Setup {
        let dir = tempfile::tempdir().expect("dir");
        fs::create_dir_all(dir.path().join("logs")).expect("mkdir");
        let inst = emu.launch_one(json!({"az": "eu-west-1a", "tags": {"embark:role": role}}));
        Setup { dir, inst }
    }

    fn agent_config(&self) -> PathBuf {
        self.dir.path().join("agent.d/embark.json")
    }

    fn reloads(&self) -> usize {
        fs::read_to_string(self.dir.path().join("reloads"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn config(&self, reload: &str, extra: &str) -> String {
        format!(
            "[boot]\nrequire = []\n[logs]\nagent_config = \"{agent}\"\nreload_command = {reload}\n\n\
             [[logs.files]]\npath = \"{logs}/*.log\"\ngroup = \"/php/{{role}}\"\n{extra}",
            agent = self.agent_config().display(),
            logs = self.dir.path().join("logs").display(),
        )
    }

    fn counting(&self) -> String {
        format!(
            "[\"/bin/sh\", \"-c\", \"echo reload >> {}\"]",
            self.dir.path().join("reloads").display()
        )
    }

    fn sync(&self, emu: &Emulator, config: &str, args: &[&str]) -> common::Run {
        let mut all = vec!["logs", "sync"];
        all.extend_from_slice(args);
        Embark::new(emu, &self.inst).config(config).run(&all)
    }

    fn streams(&self) -> Vec<(String, String)> {
        let value: Value =
            serde_json::from_slice(&fs::read(self.agent_config()).expect("agent config"))
                .expect("json");
        value["logs"]["logs_collected"]["files"]["collect_list"]
            .as_array()
            .expect("collect_list")
            .iter()
            .map(|i| {
                (
                    i["log_group_name"].as_str().unwrap_or_default().to_string(),
                    i["log_stream_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }
}

fn touch(path: &Path) {
    fs::write(path, "line\n").expect("write");
}

#[test]
fn files_added_and_removed_rewrite_once_and_reload_once_and_nothing_else_does() {
    let emu = emulator();
    let s = Setup::new(emu, "web");
    let config = s.config(&s.counting(), "");
    touch(&s.dir.path().join("logs/laravel-2026-11-26.log"));
    s.sync(emu, &config, &[]).expect_code(0);
    assert_eq!(
        s.streams(),
        vec![("/php/web".into(), "laravel-2026-11-26.log".into())]
    );
    assert_eq!(s.reloads(), 1);

    // No change: no write (the file's mtime stays), no reload.
    let mtime = fs::metadata(s.agent_config())
        .expect("meta")
        .modified()
        .expect("mtime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let run = s.sync(emu, &config, &[]).expect_code(0);
    assert_has(&run.stdout(), "nothing written, no reload");
    assert_eq!(
        fs::metadata(s.agent_config())
            .expect("meta")
            .modified()
            .expect("mtime"),
        mtime
    );
    assert_eq!(s.reloads(), 1);

    // A new daily file and one gone: one rewrite, one reload.
    touch(&s.dir.path().join("logs/laravel-2026-11-27.log"));
    fs::remove_file(s.dir.path().join("logs/laravel-2026-11-26.log")).expect("rm");
    touch(&s.dir.path().join("logs/ignored.txt"));
    let run = s.sync(emu, &config, &[]).expect_code(0);
    assert_has(&run.stdout(), "(+1 -1)");
    assert_eq!(
        s.streams(),
        vec![("/php/web".into(), "laravel-2026-11-27.log".into())]
    );
    assert_eq!(s.reloads(), 2);
}

#[test]
fn per_instance_streams_and_roles() {
    let emu = emulator();
    let s = Setup::new(emu, "cron");
    touch(&s.dir.path().join("logs/cron.log"));
    let extra = format!(
        "per_instance = true\n\n[[logs.files]]\npath = \"{}/*.log\"\ngroup = \"/web-only\"\nroles = [\"web\"]\n",
        s.dir.path().join("logs").display()
    );
    s.sync(emu, &s.config(&s.counting(), &extra), &[])
        .expect_code(0);
    let streams = s.streams();
    assert_eq!(
        streams.len(),
        1,
        "the web-only entry is left out on a cron instance: {streams:?}"
    );
    assert_eq!(streams[0].0, "/php/cron");
    assert!(
        streams[0]
            .1
            .starts_with(&format!("cron.log-{}-", s.inst.id)),
        "{streams:?}"
    );
}

#[test]
fn plan_shows_the_streams_and_changes_nothing() {
    let emu = emulator();
    let s = Setup::new(emu, "web");
    touch(&s.dir.path().join("logs/a.log"));
    let run = s
        .sync(emu, &s.config(&s.counting(), ""), &["--plan"])
        .expect_code(0);
    assert_has(&run.stdout(), "would write 1 log streams (+1 -0)");
    assert_has(&run.stdout(), "+ ");
    assert!(!s.agent_config().exists());
    assert_eq!(s.reloads(), 0);
}

#[test]
fn a_failing_reload_is_reported() {
    let emu = emulator();
    let s = Setup::new(emu, "web");
    touch(&s.dir.path().join("logs/a.log"));
    let run = s
        .sync(
            emu,
            &s.config(
                "[\"/bin/sh\", \"-c\", \"echo agent broken >&2; exit 3\"]",
                "",
            ),
            &[],
        )
        .expect_code(1);
    let err = run.stderr();
    assert_has(&err, "the agent's reload");
    assert_has(&err, "agent broken");
}

#[test]
fn without_the_agent_the_step_is_skipped_and_check_warns() {
    let emu = emulator();
    let s = Setup::new(emu, "web");
    let config = s.config(
        "[\"amazon-cloudwatch-agent-ctl\", \"-a\", \"fetch-config\"]",
        "",
    );
    let run = s.sync(emu, &config, &[]).expect_code(0);
    assert_has(&run.stdout(), "the CloudWatch agent is not installed");
    assert!(!s.agent_config().exists());
    let check = Embark::new(emu, &s.inst)
        .config(&config)
        .run(&["check"])
        .expect_code(0);
    assert_has(
        &check.stdout(),
        "warning: the CloudWatch agent is not installed",
    );
    assert_has(&check.stdout(), "matches nothing yet");
}
