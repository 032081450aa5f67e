//! Logs (the talk's aws-log-checker): `[[logs.files]]` globs expanded into one CloudWatch agent
//! `collect_list` entry — one log stream — per file, the agent's configuration rewritten atomically
//! and only when the set of files changed, then the agent asked to reload (docs/logs.md).
//!
//! The agent, left to itself, merges a directory's files into one stream; with one entry per file each
//! file keeps a stream of its own, which is what makes CloudWatch Logs usable for PHP fleets whose
//! logs are daily files in `storage/logs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{LogFiles, LogsConfig};
use crate::context::Instance;
use crate::status::{self, Reported};

/// The agent's schema allows at most this many entries in `collect_list`.
pub const MAX_FILES: usize = 16_384;
/// CloudWatch Logs: stream and group names of at most 512 characters.
pub const NAME_MAX: usize = 512;
/// Directories walked below a glob's base, at most (a runaway tree must not stall a boot).
const MAX_DEPTH: usize = 12;
const MAX_ENTRIES_SEEN: usize = 200_000;
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("the glob {glob:?} of [[logs.files]] is not valid: {why}")]
    Glob { glob: String, why: String },
    #[error("the log group name {name:?} (from [[logs.files]] group) is not valid: {why}")]
    GroupName { name: String, why: String },
    #[error("cannot write the CloudWatch agent configuration {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wrote {} but the agent's reload ({command}) failed: {why}; the agent still runs its previous configuration", path.display())]
    Reload {
        path: PathBuf,
        command: String,
        why: String,
    },
}

impl LogsError {
    pub fn is_usage(&self) -> bool {
        matches!(self, LogsError::Glob { .. } | LogsError::GroupName { .. })
    }
}

/// What the placeholders of group and stream names stand for on this instance.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub instance_id: String,
    pub private_ip: String,
    pub role: Option<String>,
    pub group: Option<String>,
}

impl Names {
    pub fn of(instance: &Instance) -> Names {
        Names {
            instance_id: instance.id().to_string(),
            private_ip: instance
                .identity
                .metadata
                .private_ipv4
                .clone()
                .unwrap_or_default(),
            role: instance.config.role.clone(),
            group: instance.group().map(str::to_string),
        }
    }
}

/// One log file and the stream it goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stream {
    pub file: PathBuf,
    pub group: String,
    pub stream: String,
}

/// The entries that apply here: this role, this preset.
pub fn applicable<'a>(config: &'a LogsConfig, role: Option<&str>) -> Vec<&'a LogFiles> {
    config
        .files
        .iter()
        .filter(|f| f.roles.is_empty() || role.is_some_and(|r| f.roles.iter().any(|x| x == r)))
        .filter(|f| f.preset.is_none() || f.preset == config.preset)
        .collect()
}

/// The fixed directory a glob starts from (everything before its first pattern character), and the
/// rest.
fn split_glob(glob: &str) -> (PathBuf, String) {
    let cut = glob.find(['*', '?', '[', '{']).unwrap_or(glob.len());
    let base_end = glob[..cut].rfind('/').unwrap_or(0);
    let base = if base_end == 0 {
        "/"
    } else {
        &glob[..base_end]
    };
    (
        PathBuf::from(base),
        glob[base_end..].trim_start_matches('/').to_string(),
    )
}

/// The files a `[[logs.files]]` entry matches now, sorted; with `recursive`, its file name pattern
/// also matches in every directory below the glob's base.
pub fn expand(entry: &LogFiles) -> Result<(PathBuf, Vec<PathBuf>), LogsError> {
    let (base, rest) = split_glob(&entry.path);
    let pattern = if entry.recursive {
        let name = rest.rsplit('/').next().unwrap_or(&rest);
        format!("{}/**/{name}", base.display())
    } else {
        entry.path.clone()
    };
    let matcher = globset::GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| LogsError::Glob {
            glob: entry.path.clone(),
            why: e.to_string(),
        })?
        .compile_matcher();
    let mut found = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![(base.clone(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES_SEEN {
                tracing::warn!(glob = %pattern, "stopped after {MAX_ENTRIES_SEEN} directory entries");
                break;
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < MAX_DEPTH {
                stack.push((path, depth + 1));
            } else if kind.is_file() && matcher.is_match(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok((base, found))
}

/// CloudWatch Logs refuses `:` and `*` in stream names; they become `_` (stable: the same file always
/// maps to the same name). A name over 512 characters keeps its start and ends with a digest of the
/// whole, so that two long names never collide.
pub fn stream_name(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c == ':' || c == '*' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if mapped.chars().count() <= NAME_MAX {
        return mapped;
    }
    let mut hasher = crate::fsutil::Hasher::new();
    hasher.update(mapped.as_bytes());
    let (digest, _) = hasher.finish();
    let keep: String = mapped.chars().take(NAME_MAX - 65).collect();
    format!("{keep}-{digest}")
}

/// `{role}`, `{group}`, `{instance_id}` replaced; the result checked against CloudWatch's rules.
pub fn group_name(template: &str, names: &Names) -> Result<String, LogsError> {
    let name = template
        .replace("{role}", names.role.as_deref().unwrap_or("none"))
        .replace("{group}", names.group.as_deref().unwrap_or("none"))
        .replace("{instance_id}", &names.instance_id);
    let bad = |why: &str| LogsError::GroupName {
        name: name.clone(),
        why: why.to_string(),
    };
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(bad("it must have 1 to 512 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c))
    {
        return Err(bad("CloudWatch allows only letters, digits and . _ - / #"));
    }
    Ok(name)
}

/// A file's stream and the entry that collects it.
pub type Collected<'a> = (Stream, &'a LogFiles);

/// Every file of every applicable entry and its stream, at most [`MAX_FILES`]; the second value is
/// how many were left out past that limit.
pub fn streams<'a>(
    config: &'a LogsConfig,
    names: &Names,
) -> Result<(Vec<Collected<'a>>, usize), LogsError> {
    let mut all = Vec::new();
    let mut taken = BTreeSet::new();
    for entry in applicable(config, names.role.as_deref()) {
        let group = group_name(&entry.group, names)?;
        let (base, files) = expand(entry)?;
        for file in files {
            // A file two globs match is collected once, by the first.
            if !taken.insert(file.clone()) {
                continue;
            }
            let relative = file
                .strip_prefix(&base)
                .unwrap_or(&file)
                .display()
                .to_string();
            let mut raw = match &entry.stream {
                Some(fixed) => fixed.replace("{file}", &relative),
                None => relative,
            };
            if entry.per_instance {
                raw = format!("{raw}-{}-{}", names.instance_id, names.private_ip);
            }
            let stream = Stream {
                file,
                group: group.clone(),
                stream: stream_name(&raw),
            };
            all.push((stream, entry));
        }
    }
    let over = all.len().saturating_sub(MAX_FILES);
    all.truncate(MAX_FILES);
    Ok((all, over))
}

/// The agent's configuration: one `collect_list` entry per file, with only the documented fields.
pub fn agent_config(streams: &[Collected<'_>]) -> Value {
    let list: Vec<Value> = streams
        .iter()
        .map(|(s, entry)| {
            let mut item = json!({
                "file_path": s.file.display().to_string(),
                "log_group_name": s.group,
                "log_stream_name": s.stream,
            });
            let optional = [
                (
                    "timestamp_format",
                    entry.timestamp_format.clone().map(Value::from),
                ),
                ("timezone", entry.timezone.clone().map(Value::from)),
                (
                    "multi_line_start_pattern",
                    entry.multi_line_start_pattern.clone().map(Value::from),
                ),
                ("retention_in_days", entry.retention_days.map(Value::from)),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    item[key] = value;
                }
            }
            item
        })
        .collect();
    json!({"logs": {"logs_collected": {"files": {"collect_list": list}}}})
}

/// The streams a configuration file names (to say what a change adds and removes).
fn streams_in(config: &Value) -> BTreeSet<(String, String, String)> {
    config["logs"]["logs_collected"]["files"]["collect_list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let field = |k: &str| item[k].as_str().unwrap_or_default().to_string();
            (
                field("file_path"),
                field("log_group_name"),
                field("log_stream_name"),
            )
        })
        .collect()
}

/// What the step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    NotConfigured,
    /// The reload command's program is not installed: the agent is absent.
    AgentAbsent {
        program: String,
    },
    Unchanged {
        streams: usize,
    },
    Changed {
        streams: usize,
        added: Vec<String>,
        removed: Vec<String>,
        planned: bool,
        left_out: usize,
    },
}

impl Reported for StepOutcome {
    fn status(&self) -> status::Outcome {
        match self {
            StepOutcome::NotConfigured | StepOutcome::AgentAbsent { .. } => {
                status::Outcome::Skipped
            }
            StepOutcome::Changed { planned: true, .. } => status::Outcome::Planned,
            _ => status::Outcome::Ok,
        }
    }

    fn detail(&self) -> String {
        match self {
            StepOutcome::NotConfigured => "no [[logs.files]] for this instance".to_string(),
            StepOutcome::AgentAbsent { program } => format!(
                "the CloudWatch agent is not installed ({program} not found): no log streams"
            ),
            StepOutcome::Unchanged { streams } => {
                format!("{streams} log streams; the files are the same: nothing written, no reload")
            }
            StepOutcome::Changed {
                streams,
                added,
                removed,
                planned,
                left_out,
            } => {
                let mut lines = vec![format!(
                    "{} {streams} log streams (+{} -{}){}",
                    if *planned { "would write" } else { "wrote" },
                    added.len(),
                    removed.len(),
                    if *planned { "" } else { "; agent reloaded" }
                )];
                lines.extend(added.iter().map(|s| format!("  + {s}")));
                lines.extend(removed.iter().map(|s| format!("  - {s}")));
                if *left_out > 0 {
                    lines.push(format!(
                        "  {left_out} more files left out: the agent accepts at most {MAX_FILES} entries"
                    ));
                }
                lines.join("\n")
            }
        }
    }
}

/// The step (and `embark logs sync`): write the agent's configuration when the file set changed, then
/// reload the agent. `plan`: say what would change, change nothing.
pub async fn step(
    config: &LogsConfig,
    names: &Names,
    plan: bool,
) -> Result<StepOutcome, LogsError> {
    if applicable(config, names.role.as_deref()).is_empty() {
        return Ok(StepOutcome::NotConfigured);
    }
    let reload = reload_argv(config);
    let program = reload.first().cloned().unwrap_or_default();
    let Ok(resolved) = crate::command::find(&program) else {
        tracing::warn!(
            "the CloudWatch agent is not installed ({program} not found): no log streams"
        );
        return Ok(StepOutcome::AgentAbsent { program });
    };
    let (streams, left_out) = streams(config, names)?;
    if left_out > 0 {
        tracing::warn!(
            "{left_out} log files left out: the CloudWatch agent accepts at most {MAX_FILES}"
        );
    }
    let wanted = agent_config(&streams);
    let mut bytes = serde_json::to_vec_pretty(&wanted).unwrap_or_default();
    bytes.push(b'\n');
    let path = &config.agent_config;
    let existing = std::fs::read(path).ok();
    if existing.as_deref() == Some(bytes.as_slice()) {
        return Ok(StepOutcome::Unchanged {
            streams: streams.len(),
        });
    }
    let before = existing
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| streams_in(&v))
        .unwrap_or_default();
    let after = streams_in(&wanted);
    let show = |s: &(String, String, String)| format!("{} → {} / {}", s.0, s.1, s.2);
    let added: Vec<String> = after.difference(&before).map(show).collect();
    let removed: Vec<String> = before.difference(&after).map(show).collect();
    if !plan {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LogsError::Write {
                path: path.clone(),
                source,
            })?;
        }
        crate::fsutil::atomic_write(path, &bytes, 0o644).map_err(|source| LogsError::Write {
            path: path.clone(),
            source,
        })?;
        run_reload(&resolved, &reload[1..], path).await?;
    }
    Ok(StepOutcome::Changed {
        streams: streams.len(),
        added,
        removed,
        planned: plan,
        left_out,
    })
}

fn reload_argv(config: &LogsConfig) -> Vec<String> {
    let file = config.agent_config.display().to_string();
    config
        .reload_command
        .iter()
        .map(|a| a.replace("{agent_config}", &file))
        .collect()
}

async fn run_reload(program: &Path, args: &[String], path: &Path) -> Result<(), LogsError> {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let failed = |why: String| LogsError::Reload {
        path: path.to_path_buf(),
        command: command.clone(),
        why,
    };
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(RELOAD_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(failed(format!(
            "it exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(Err(err)) => Err(failed(err.to_string())),
        Err(_) => Err(failed(format!(
            "it did not finish within {}",
            humantime::format_duration(RELOAD_TIMEOUT)
        ))),
    }
}

/// For `check`: each applicable glob and how many files it matches now (zero is worth a line).
pub fn glob_report(
    config: &LogsConfig,
    role: Option<&str>,
) -> BTreeMap<String, Result<usize, String>> {
    applicable(config, role)
        .into_iter()
        .map(|entry| {
            let count = expand(entry)
                .map(|(_, f)| f.len())
                .map_err(|e| e.to_string());
            (entry.path.clone(), count)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(path: &str) -> LogFiles {
        LogFiles {
            path: path.to_string(),
            recursive: false,
            group: "/app/{role}".into(),
            stream: None,
            per_instance: false,
            timestamp_format: None,
            timezone: None,
            multi_line_start_pattern: None,
            retention_days: None,
            roles: Vec::new(),
            preset: None,
        }
    }

    fn names() -> Names {
        Names {
            instance_id: "i-0abc".into(),
            private_ip: "10.0.1.5".into(),
            role: Some("web".into()),
            group: Some("web-asg".into()),
        }
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for p in [
            "logs/a.log",
            "logs/b.log",
            "logs/c.txt",
            "logs/sub/d.log",
            "other/e.log",
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        dir
    }

    #[test]
    fn one_stream_per_file_named_after_its_path_below_the_glob() {
        let dir = tree();
        let config = LogsConfig {
            files: vec![files(&format!("{}/logs/*.log", dir.path().display()))],
            ..LogsConfig::default()
        };
        let (streams, over) = streams(&config, &names()).unwrap();
        assert_eq!(over, 0);
        let got: Vec<(&str, &str)> = streams
            .iter()
            .map(|(s, _)| (s.group.as_str(), s.stream.as_str()))
            .collect();
        assert_eq!(got, vec![("/app/web", "a.log"), ("/app/web", "b.log")]);
    }

    #[test]
    fn recursive_matches_the_name_pattern_below_the_base() {
        let dir = tree();
        let mut entry = files(&format!("{}/logs/*.log", dir.path().display()));
        entry.recursive = true;
        let (_, found) = expand(&entry).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["logs/a.log", "logs/b.log", "logs/sub/d.log"]);
    }

    #[test]
    fn per_instance_streams_carry_the_instance_and_its_address() {
        let dir = tree();
        let mut entry = files(&format!("{}/logs/a.log", dir.path().display()));
        entry.per_instance = true;
        let config = LogsConfig {
            files: vec![entry],
            ..LogsConfig::default()
        };
        let (streams, _) = streams(&config, &names()).unwrap();
        assert_eq!(streams[0].0.stream, "a.log-i-0abc-10.0.1.5");
    }

    #[test]
    fn roles_and_presets_select_entries() {
        let mut web = files("/var/log/web/*.log");
        web.roles = vec!["web".into()];
        let mut cron = files("/var/log/cron/*.log");
        cron.roles = vec!["cron".into()];
        let mut special = files("/var/log/special/*.log");
        special.preset = Some("debug".into());
        let mut config = LogsConfig {
            files: vec![web, cron, special],
            ..LogsConfig::default()
        };
        let paths = |c: &LogsConfig, role: Option<&str>| -> Vec<String> {
            applicable(c, role).iter().map(|f| f.path.clone()).collect()
        };
        assert_eq!(paths(&config, Some("web")), vec!["/var/log/web/*.log"]);
        assert!(paths(&config, None).is_empty());
        config.preset = Some("debug".into());
        assert_eq!(
            paths(&config, Some("cron")),
            vec!["/var/log/cron/*.log", "/var/log/special/*.log"]
        );
    }

    #[test]
    fn stream_names_are_mapped_stably_never_dropped() {
        assert_eq!(
            stream_name("laravel:2026-11-27*.log"),
            "laravel_2026-11-27_.log"
        );
        let long = "x".repeat(600);
        let a = stream_name(&long);
        assert_eq!(a.chars().count(), NAME_MAX);
        assert_eq!(a, stream_name(&long), "stable");
        assert_ne!(
            a,
            stream_name(&format!("{long}y")),
            "no collision between long names"
        );
    }

    #[test]
    fn group_names_take_placeholders_and_follow_cloudwatchs_rules() {
        assert_eq!(
            group_name("/php/{group}/{role}", &names()).unwrap(),
            "/php/web-asg/web"
        );
        assert!(group_name("/php app", &names()).unwrap_err().is_usage());
    }

    /// The agent's published schema (translator/config/schema.json, `logsFilesDefinition`) allows
    /// exactly these fields in a `collect_list` entry (additionalProperties: false).
    const DOCUMENTED: [&str; 16] = [
        "file_path",
        "log_group_name",
        "log_stream_name",
        "log_group_class",
        "multi_line_start_pattern",
        "timestamp_format",
        "timezone",
        "trim_timestamp",
        "encoding",
        "auto_removal",
        "backpressure_mode",
        "blacklist",
        "publish_multi_logs",
        "retention_in_days",
        "filters",
        "service.name",
    ];

    #[test]
    fn the_generated_configuration_uses_only_documented_fields() {
        let dir = tree();
        let mut entry = files(&format!("{}/logs/*.log", dir.path().display()));
        entry.timestamp_format = Some("%Y-%m-%d %H:%M:%S".into());
        entry.timezone = Some("UTC".into());
        entry.multi_line_start_pattern = Some("^\\[".into());
        entry.retention_days = Some(30);
        let config = LogsConfig {
            files: vec![entry],
            ..LogsConfig::default()
        };
        let (streams, _) = streams(&config, &names()).unwrap();
        let value = agent_config(&streams);
        let top: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(top, vec!["logs"]);
        let list = value["logs"]["logs_collected"]["files"]["collect_list"]
            .as_array()
            .unwrap();
        assert_eq!(list.len(), 2);
        for item in list {
            for key in item.as_object().unwrap().keys() {
                assert!(
                    DOCUMENTED.contains(&key.as_str()),
                    "undocumented field {key}"
                );
            }
            assert_eq!(item["retention_in_days"], 30);
            assert_eq!(item["timezone"], "UTC");
        }
    }

    #[test]
    fn past_the_agents_limit_files_are_counted_not_silently_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        for i in 0..(MAX_FILES + 3) {
            std::fs::write(logs.join(format!("{i:05}.log")), "").unwrap();
        }
        let config = LogsConfig {
            files: vec![files(&format!("{}/*.log", logs.display()))],
            ..LogsConfig::default()
        };
        let (streams, over) = streams(&config, &names()).unwrap();
        assert_eq!((streams.len(), over), (MAX_FILES, 3));
    }
}
