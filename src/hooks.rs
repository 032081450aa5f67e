//! Hooks: argv commands (no shell) and HTTP GETs (the opcache reset pattern), run after a release's
//! switch and, as stop hooks, when an instance drains.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt;

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

/// Run one hook; the error is why it failed, the success the end of its output (at most 2 KiB: a
/// run-once hook's outcome records it).
pub async fn run(hook: &Hook, env: &HookEnv<'_>, http: &reqwest::Client) -> Result<String, String> {
    match (&hook.run, &hook.http_get) {
        (Some(argv), _) => run_command(hook, argv, env).await,
        (None, Some(url)) => {
            let request = http.get(url).timeout(hook.timeout).send();
            let response = request.await.map_err(|e| crate::output::error_chain(&e))?;
            if response.status().is_success() {
                Ok(format!("HTTP {}", response.status()))
            } else {
                Err(format!("it answered HTTP {}", response.status()))
            }
        }
        (None, None) => Err("it has neither `run` nor `http_get`".into()),
    }
}

async fn run_command(hook: &Hook, argv: &[String], env: &HookEnv<'_>) -> Result<String, String> {
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(user) = &hook.user {
        let (uid, gid) =
            crate::command::resolve_owner(user).map_err(|why| format!("its user names {why}"))?;
        command.uid(uid).gid(gid);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    // The hook's output goes to our stderr (the boot log), line by line; stdout stays embark's
    // report. The end of its stderr is kept for the error.
    let name = describe(hook);
    let out = child
        .stdout
        .take()
        .map(|o| relay(o, name.clone(), "stdout"));
    let err = child.stderr.take().map(|e| relay(e, name, "stderr"));
    let relays = async {
        tokio::join!(
            async {
                match out {
                    Some(out) => out.await,
                    None => String::new(),
                }
            },
            async {
                match err {
                    Some(err) => err.await,
                    None => String::new(),
                }
            }
        )
    };
    let waited = async {
        let status = child.wait().await;
        // Bounded: a process the hook left running in the background may hold its pipes open.
        let (out, tail) = tokio::time::timeout(RELAY_AFTER_EXIT, relays)
            .await
            .unwrap_or_default();
        (status, out, tail)
    };
    let result = match tokio::time::timeout(hook.timeout, waited).await {
        Ok((Ok(status), out, tail)) if status.success() => return Ok(last(&(out + &tail))),
        Ok((Ok(status), _, tail)) => (
            match status.code() {
                Some(code) => format!("it exited with status {code}"),
                None => format!("it was killed ({status})"),
            },
            tail,
        ),
        Ok((Err(err), _, tail)) => (format!("waiting for it failed: {err}"), tail),
        Err(_) => {
            let _ = child.kill().await;
            (
                format!(
                    "it did not finish within {}; killed",
                    humantime::format_duration(hook.timeout)
                ),
                String::new(),
            )
        }
    };
    Err(match result {
        (why, tail) if tail.trim().is_empty() => why,
        (why, tail) => format!("{why}; its stderr ended with: {}", tail.trim_end()),
    })
}

/// How long a hook's output is still read after it exited.
const RELAY_AFTER_EXIT: std::time::Duration = std::time::Duration::from_secs(2);
/// The end of a hook's stderr kept for its error, and the longest line relayed whole.
const TAIL: usize = 2048;
const LINE: usize = 16 << 10;

/// The last [`TAIL`] bytes of `text`, at a character boundary.
fn last(text: &str) -> String {
    let mut start = text.len().saturating_sub(TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Relays `stream` line by line; returns its last [`TAIL`] bytes (at a character boundary).
async fn relay(
    stream: impl tokio::io::AsyncRead + Unpin,
    hook: String,
    which: &'static str,
) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut tail: Vec<u8> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        crate::output::hook_line(&hook, which, text.trim_end_matches(['\n', '\r']));
        tail.extend_from_slice(&line);
        if tail.len() > TAIL {
            tail.drain(..tail.len() - TAIL);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}
