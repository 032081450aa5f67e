//! Hooks: argv commands (no shell) and HTTP GETs (the opcache reset pattern), run after a release's
//! switch and, as stop hooks, when an instance drains.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;

use crate::config::Hook;

/// What a hook sees: its environment variables and its working directory.
pub struct HookEnv<'a> {
    pub vars: Vec<(&'static str, String)>,
    pub dir: &'a Path,
}

/// Hooks for this role (a hook without `roles` runs on every role).
pub fn for_role<'a>(hooks: &'a [Hook], role: Option<&str>) -> Vec<&'a Hook> {
    hooks
        .iter()
        .filter(|h| h.roles.is_empty() || role.is_some_and(|r| h.roles.iter().any(|x| x == r)))
        .collect()
}

pub fn describe(hook: &Hook) -> String {
    match (&hook.run, &hook.http_get) {
        (Some(argv), _) => format!("`{}`", argv.join(" ")),
        (None, Some(url)) => format!("GET {url}"),
        (None, None) => "an empty hook".to_string(),
    }
}

/// Run one hook; the error is why it failed.
pub async fn run(hook: &Hook, env: &HookEnv<'_>, http: &reqwest::Client) -> Result<(), String> {
    match (&hook.run, &hook.http_get) {
        (Some(argv), _) => run_command(hook, argv, env).await,
        (None, Some(url)) => {
            let request = http.get(url).timeout(hook.timeout).send();
            let response = request.await.map_err(|e| crate::output::error_chain(&e))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("it answered HTTP {}", response.status()))
            }
        }
        (None, None) => Err("it has neither `run` nor `http_get`".into()),
    }
}

async fn run_command(hook: &Hook, argv: &[String], env: &HookEnv<'_>) -> Result<(), String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "its `run` is empty".to_string())?;
    // Resolved here, before the command changes into the release directory: with `.` (or any
    // relative entry) in PATH, a bare `php` would otherwise run the release's own `php` as root.
    let resolved = crate::command::find(program)?;
    let mut command = tokio::process::Command::new(&resolved);
    command
        .args(args)
        .current_dir(env.dir)
        .envs(env.vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // The hook's output goes to our stderr (the boot log); stdout stays embark's report.
    if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
        command.stdout(Stdio::from(err));
    }
    if let Some(user) = &hook.user {
        let (uid, gid) =
            crate::command::resolve_owner(user).map_err(|why| format!("its user names {why}"))?;
        command.uid(uid).gid(gid);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(match status.code() {
            Some(code) => format!("it exited with status {code}"),
            None => format!("it was killed ({status})"),
        }),
        Ok(Err(err)) => Err(format!("waiting for it failed: {err}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "it did not finish within {}; killed",
                humantime::format_duration(hook.timeout)
            ))
        }
    }
}
