//! `embark release status`: the fleet at a glance, from the source alone — the pointer (one GET), every
//! agent's status object (one list, `roster.rs`) and, when the agents name their group, its InService
//! instances (one Auto Scaling call). The JSON form is documented in docs/cli.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde::Serialize;

use super::error::ReleaseError;
use super::format::Pointer;
use super::roster::{self, Heard, State};
use super::store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub source: String,
    /// `null` when nothing was pushed.
    pub pointer: Option<PointerView>,
    /// The group the agents name (the most named, if they differ).
    pub group: Option<String>,
    /// Whether the group's InService instances are known (Auto Scaling answered).
    pub in_service_known: bool,
    pub instances: Vec<Row>,
    /// Status objects of instances that are no longer InService (left the group): not in `instances`.
    pub departed: usize,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct PointerView {
    pub release: String,
    pub pushed: String,
    pub by: String,
    pub message: String,
    /// The signing key's id, when the release is signed.
    pub signed_by: Option<String>,
    /// Set when an agent moved the pointer back from this failed release.
    pub rollback_of: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub instance: String,
    /// The release it serves; `null` before its agent reported.
    pub serves: Option<String>,
    pub deploying: Option<String>,
    /// `serving`, `staging`, `ready`, `waiting`, `switching`, `validated`, `failed`, `rolled back`,
    /// `held`, or `unknown` (InService, but its agent never reported).
    pub state: String,
    /// `[wave, waves]` when the deploy has more than one.
    pub wave: Option<(usize, usize)>,
    pub reason: Option<String>,
    /// When its agent last wrote its status (RFC 3339), and how long ago in seconds.
    pub heard: Option<String>,
    pub heard_ago_s: Option<u64>,
    /// Not heard from for three heartbeats.
    pub silent: bool,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The instances expected on the pointer's release (InService ones, or every one reporting).
    pub instances: usize,
    /// How many serve the pointer's release, validated (or serving it since their boot).
    pub on_pointer: usize,
    pub failed: usize,
    pub silent: usize,
    /// The highest wave reported for the pointer's release.
    pub wave: Option<(usize, usize)>,
    /// `converged`, `in progress`, `failed` or `empty` (no instance expected).
    pub verdict: String,
    pub text: String,
}

/// Reads the fleet; `in_service` is asked for the group the agents name (one call), when given.
pub async fn read<F, Fut>(store: &Store, in_service: F) -> Result<Overview, ReleaseError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Option<BTreeSet<String>>>,
{
    let pointer = store.read_pointer().await?.map(|(p, _)| p);
    let heard = roster::read(store).await?;
    let group = most_named_group(&heard);
    let expected = match &group {
        Some(group) => in_service(group.clone()).await,
        None => None,
    };
    Ok(build(
        store.source.to_string(),
        pointer.as_ref(),
        heard,
        group,
        expected,
        SystemTime::now(),
    ))
}

fn most_named_group(heard: &BTreeMap<String, Heard>) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for h in heard.values() {
        if let Some(g) = &h.entry.group {
            *counts.entry(g).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(g, _)| g.to_string())
}

fn build(
    source: String,
    pointer: Option<&Pointer>,
    heard: BTreeMap<String, Heard>,
    group: Option<String>,
    expected: Option<BTreeSet<String>>,
    now: SystemTime,
) -> Overview {
    let target = pointer.map(|p| p.release.as_str());
    let mut departed = 0;
    let mut rows = Vec::new();
    let ids: BTreeSet<String> = match &expected {
        Some(set) => {
            departed = heard.keys().filter(|id| !set.contains(*id)).count();
            set.clone()
        }
        None => heard.keys().cloned().collect(),
    };
    for id in &ids {
        rows.push(match heard.get(id) {
            Some(h) => row(h, now),
            None => Row {
                instance: id.clone(),
                serves: None,
                deploying: None,
                state: "unknown".into(),
                wave: None,
                reason: Some("InService, but its agent never reported".into()),
                heard: None,
                heard_ago_s: None,
                silent: true,
                version: None,
            },
        });
    }
    let summary = summarize(pointer, target, &rows);
    Overview {
        source,
        pointer: pointer.map(|p| PointerView {
            release: p.release.clone(),
            pushed: p.time.clone(),
            by: p.who.clone(),
            message: p.message.clone(),
            signed_by: p.signature.as_ref().map(|s| s.key_id.clone()),
            rollback_of: p.rollback_of.clone(),
        }),
        group,
        in_service_known: expected.is_some(),
        instances: rows,
        departed,
        summary,
    }
}

fn row(h: &Heard, now: SystemTime) -> Row {
    let e = &h.entry;
    Row {
        instance: e.instance.clone(),
        serves: e.serves.clone(),
        deploying: e.deploying.clone(),
        state: e.state.word().to_string(),
        wave: e.wave,
        reason: e.reason.clone(),
        heard: h
            .at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        heard_ago_s: h
            .at
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs()),
        silent: h.silent(now),
        version: Some(e.version.clone()),
    }
}

/// Done with the pointer's release: serving it, validated (or serving since its boot, or back on it).
fn is_on(row: &Row, target: &str) -> bool {
    row.serves.as_deref() == Some(target)
        && [
            State::Validated.word(),
            State::Serving.word(),
            State::RolledBack.word(),
        ]
        .contains(&row.state.as_str())
}

fn summarize(pointer: Option<&Pointer>, target: Option<&str>, rows: &[Row]) -> Summary {
    let Some(target) = target else {
        return Summary {
            instances: rows.len(),
            on_pointer: 0,
            failed: 0,
            silent: rows.iter().filter(|r| r.silent).count(),
            wave: None,
            verdict: "empty".into(),
            text: "nothing was pushed to this source".into(),
        };
    };
    let on = rows.iter().filter(|r| is_on(r, target)).count();
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.state == State::Failed.word())
        .collect();
    let silent = rows.iter().filter(|r| r.silent).count();
    let wave = rows
        .iter()
        .filter(|r| r.deploying.as_deref() == Some(target) || r.serves.as_deref() == Some(target))
        .filter_map(|r| r.wave)
        .max();
    let mut text = format!("{on}/{} on {target}", rows.len());
    if let Some((k, n)) = wave {
        text.push_str(&format!(", wave {k} of {n}"));
    }
    if let Some(first) = failed.first() {
        text.push_str(&format!(
            ", {} failed: {} {}",
            failed.len(),
            first.instance,
            first.reason.as_deref().unwrap_or("(no reason given)")
        ));
    }
    if silent > 0 {
        text.push_str(&format!(", {silent} silent"));
    }
    if let Some(failed) = pointer.and_then(|p| p.rollback_of.as_deref()) {
        text.push_str(&format!(" (went back from the failed release {failed})"));
    }
    let verdict = if rows.is_empty() {
        "empty"
    } else if on == rows.len() {
        "converged"
    } else if failed
        .iter()
        .any(|r| r.deploying.as_deref() == Some(target))
    {
        "failed"
    } else {
        "in progress"
    };
    Summary {
        instances: rows.len(),
        on_pointer: on,
        failed: failed.len(),
        silent,
        wave,
        verdict: verdict.into(),
        text,
    }
}

/// Where a deploy of `release` stands, for `release status --wait`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Converged,
    Pending,
    Failed(String),
}

impl Overview {
    pub fn verdict(&self, release: &str) -> Verdict {
        let Some(pointer) = &self.pointer else {
            return Verdict::Failed("the pointer is gone from the source".into());
        };
        if pointer.release != release {
            return Verdict::Failed(match &pointer.rollback_of {
                Some(failed) if failed == release => format!(
                    "release {release} failed and the fleet went back to {}",
                    pointer.release
                ),
                _ => format!(
                    "the pointer moved on to {} before {release} converged",
                    pointer.release
                ),
            });
        }
        if let Some(row) = self
            .instances
            .iter()
            .find(|r| r.state == State::Failed.word() && r.deploying.as_deref() == Some(release))
        {
            return Verdict::Failed(format!(
                "release {release} failed on {}: {}",
                row.instance,
                row.reason.as_deref().unwrap_or("(no reason given)")
            ));
        }
        if self.summary.verdict == "converged" {
            Verdict::Converged
        } else {
            Verdict::Pending
        }
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        match &self.pointer {
            None => out.push_str(&format!("{}: nothing pushed\n", self.source)),
            Some(p) => {
                out.push_str(&format!(
                    "{}: current is {}, pushed {} by {}",
                    self.source, p.release, p.pushed, p.by
                ));
                if !p.message.is_empty() {
                    out.push_str(&format!(" ({:?})", p.message));
                }
                if let Some(key) = &p.signed_by {
                    out.push_str(&format!(", signed by {key}"));
                }
                out.push('\n');
            }
        }
        for r in &self.instances {
            let mut state = r.state.clone();
            if let Some((k, n)) = r.wave {
                state.push_str(&format!(" (wave {k} of {n})"));
            }
            if let Some(d) = r
                .deploying
                .as_deref()
                .filter(|d| Some(*d) != r.serves.as_deref())
            {
                state.push_str(&format!(" {d}"));
            }
            if let Some(reason) = &r.reason {
                state.push_str(&format!(": {reason}"));
            }
            let heard = match (r.heard_ago_s, r.silent) {
                (Some(s), true) => format!("SILENT, last heard {s} s ago"),
                (Some(s), false) => format!("heard {s} s ago"),
                (None, _) => "never heard".into(),
            };
            out.push_str(&format!(
                "  {:<20} {:<28} {state}; {heard}{}\n",
                r.instance,
                r.serves.as_deref().unwrap_or("-"),
                r.version
                    .as_deref()
                    .map(|v| format!(", agent {v}"))
                    .unwrap_or_default()
            ));
        }
        if self.departed > 0 {
            out.push_str(&format!(
                "  ({} status objects of instances no longer InService not shown)\n",
                self.departed
            ));
        }
        if !self.in_service_known {
            out.push_str(
                "  (the group's InService instances are unknown: every reporting agent is shown)\n",
            );
        }
        out.push_str(&self.summary.text);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::roster::Entry;

    fn heard(id: &str, serves: &str, state: State, deploying: Option<&str>, ago: u64) -> Heard {
        Heard {
            entry: Entry {
                instance: id.into(),
                group: Some("web".into()),
                serves: Some(serves.into()),
                deploying: deploying.map(str::to_string),
                state,
                wave: None,
                reason: (state == State::Failed).then(|| "HTTP 500 on /health.php".into()),
                since: "2026-12-06T10:00:00Z".into(),
                version: "0.9.0".into(),
                heartbeat_s: 60,
            },
            at: Some(SystemTime::now() - std::time::Duration::from_secs(ago)),
        }
    }

    fn pointer(release: &str, rollback_of: Option<&str>) -> Pointer {
        Pointer {
            format: "embark/1".into(),
            release: release.into(),
            manifest_sha256: String::new(),
            time: "2026-12-06T10:00:00Z".into(),
            who: "ci".into(),
            message: String::new(),
            delta: None,
            signature: None,
            rollback_of: rollback_of.map(str::to_string),
        }
    }

    fn overview(p: &Pointer, fleet: Vec<Heard>, expected: Option<&[&str]>) -> Overview {
        let heard = fleet
            .into_iter()
            .map(|h| (h.entry.instance.clone(), h))
            .collect();
        let expected = expected.map(|ids| ids.iter().map(|s| s.to_string()).collect());
        build(
            "s3://b/app".into(),
            Some(p),
            heard,
            Some("web".into()),
            expected,
            SystemTime::now(),
        )
    }

    #[test]
    fn converged_only_when_every_in_service_instance_validated_the_pointers_release() {
        let p = pointer("R2", None);
        let fleet = || {
            vec![
                heard("i-1", "R2", State::Validated, None, 5),
                heard("i-2", "R2", State::Serving, None, 5),
                heard("i-gone", "R1", State::Serving, None, 900),
            ]
        };
        let o = overview(&p, fleet(), Some(&["i-1", "i-2"]));
        assert_eq!(o.verdict("R2"), Verdict::Converged, "{}", o.human());
        assert_eq!(o.departed, 1);
        let o = overview(&p, fleet(), Some(&["i-1", "i-2", "i-new"]));
        assert_eq!(o.verdict("R2"), Verdict::Pending);
        assert!(o.human().contains("never reported"), "{}", o.human());
        assert_eq!(o.summary.text, "2/3 on R2, 1 silent");
        let mut switching = fleet();
        switching[0].entry.state = State::Switching;
        let o = overview(&p, switching, Some(&["i-1", "i-2"]));
        assert_eq!(o.verdict("R2"), Verdict::Pending);
    }

    #[test]
    fn a_failure_or_a_moved_pointer_fails_the_wait() {
        let p = pointer("R2", None);
        let o = overview(
            &p,
            vec![
                heard("i-1", "R1", State::Failed, Some("R2"), 1),
                heard("i-2", "R1", State::Serving, None, 1),
            ],
            Some(&["i-1", "i-2"]),
        );
        let Verdict::Failed(why) = o.verdict("R2") else {
            panic!("{:?}", o.verdict("R2"))
        };
        assert!(why.contains("failed on i-1: HTTP 500"), "{why}");
        assert_eq!(o.summary.verdict, "failed");
        let back = pointer("R1", Some("R2"));
        let o = overview(&back, vec![], Some(&[]));
        assert_eq!(
            o.verdict("R2"),
            Verdict::Failed("release R2 failed and the fleet went back to R1".into())
        );
        assert_eq!(o.summary.verdict, "empty");
    }

    #[test]
    fn silent_agents_are_marked() {
        let p = pointer("R2", None);
        let o = overview(
            &p,
            vec![heard("i-1", "R2", State::Serving, None, 600)],
            None,
        );
        assert!(o.instances[0].silent);
        assert!(o.human().contains("SILENT"), "{}", o.human());
        assert!(!o.in_service_known);
    }
}
