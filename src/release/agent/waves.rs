//! Waves (`[watch] rollout`, docs/deploys.md "Waves and canaries"): after the barrier, the fleet
//! switches wave by wave. Every agent computes the same waves from the barrier's member list and the
//! deploy token (`crate::rollout`); wave k+1's go (`ready/<id>/_go-<token>-w<k+1>`) is written by
//! the member of wave k that finds, after its own validation, every member of the waves so far
//! validated (`ready/<id>/v-<token>/<instance>`), and names a moment `bake` later. A failure in any
//! wave is the fleet rollback (`failure.rs`): the pointer moves back, and the waiting agents, which
//! look at it every few seconds, give the deploy up: later waves never switch.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::barrier::{write_validated, Barrier, Fleet, Gate};
use super::{jittered, notify, record, Agent, Stop};
use crate::release::error::ReleaseError;
use crate::release::install::Target;
use crate::release::store::Polled;
use crate::rollout::wave_of;
use crate::status::{Outcome, Step};

/// This instance's place in a deploy's waves.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    waves: Vec<Vec<String>>,
    pub wave: usize,
    pub total: usize,
}

impl Plan {
    pub fn new(agent: &Agent<'_>, target: &Target, members: &BTreeSet<String>) -> Plan {
        let waves = agent.watch.rollout.waves(members, &target.token());
        let (wave, total) = wave_of(&waves, &agent.instance_id);
        Plan { waves, wave, total }
    }

    /// The members of waves 1 to `through` (1-based).
    fn members_through(&self, through: usize) -> BTreeSet<String> {
        self.waves.iter().take(through).flatten().cloned().collect()
    }
}

/// How waiting for this instance's wave ended.
pub(super) enum WaveGate {
    Open,
    /// The waves before did not all validate within the gate's deadline: not switched (tried again
    /// at the next poll).
    Held,
    /// The pointer moved while waiting (a fleet rollback, or a newer push): this deploy is over.
    Superseded(String),
}

/// How often a waiting agent looks whether the pointer moved (one conditional GET: a 304).
const POINTER_CHECK: Duration = Duration::from_secs(3);
/// How often it looks for its wave's go (one small GET).
const GO_POLL: Duration = Duration::from_secs(1);

/// Waits for this instance's wave's go: at once for wave 1; for the others until every member of the
/// waves before validated and the bake passed, giving up when the pointer moves.
pub(super) async fn wait_for_wave(
    agent: &Agent<'_>,
    group: &str,
    target: &Target,
    (pointer_key, etag): (&str, &str),
    plan: &Plan,
    stop: &mut Stop,
    steps: &mut Vec<Step>,
) -> Result<WaveGate, ReleaseError> {
    let t = Instant::now();
    let (wave, total) = (plan.wave, plan.total);
    if wave == 1 {
        let detail = format!(
            "wave 1 of {total} ({} of {} instances): switching now",
            plan.waves.first().map_or(0, Vec::len),
            plan.members_through(total).len()
        );
        record(steps, "wave", t, Outcome::Ok, detail);
        return Ok(WaveGate::Open);
    }
    let id = target.id();
    let gate = Gate::Wave {
        wave,
        expect: plan.members_through(wave - 1),
    };
    let mut fleet = Fleet::new(agent, group, &id, target.token(), gate).without_first_list();
    let mut looked = Instant::now();
    tracing::info!(release = %id, "wave {wave} of {total}: waiting until waves 1 to {} validated", wave - 1);
    loop {
        match fleet.check(t.elapsed()).await? {
            Barrier::Ready => {
                let detail = format!(
                    "wave {wave} of {total}: go after waves 1 to {} validated (and the bake of {})",
                    wave - 1,
                    humantime::format_duration(agent.watch.bake)
                );
                tracing::info!(release = %id, "{detail}");
                record(steps, "wave", t, Outcome::Ok, detail);
                return Ok(WaveGate::Open);
            }
            Barrier::TimedOut(missing) => {
                let text = format!(
                    "release {id}, wave {wave} of {total}: not validated in time by {}; holding on the current release (tried again at the next poll)",
                    missing.join(", ")
                );
                let first = agent
                    .barrier_noted
                    .lock()
                    .map(|mut noted| noted.insert(format!("{id} wave {wave}")))
                    .unwrap_or(true);
                if first {
                    tracing::warn!("{text}");
                    notify(agent, agent.error_topic.as_deref(), "wave held", &text).await;
                }
                record(steps, "wave", t, Outcome::Failed, text);
                return Ok(WaveGate::Held);
            }
            Barrier::Wait => {}
        }
        if looked.elapsed() >= POINTER_CHECK {
            looked = Instant::now();
            if !matches!(
                agent.store.changed(pointer_key, Some(etag)).await?,
                Polled::Unchanged
            ) {
                let why = format!(
                    "the pointer moved while wave {wave} of {total} waited (a rollback or a newer push): release {id} not switched to"
                );
                tracing::warn!(release = %id, "{why}");
                record(steps, "wave", t, Outcome::Skipped, why.clone());
                return Ok(WaveGate::Superseded(why));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(GO_POLL)) => {},
            _ = stop.changed() => return Err(ReleaseError::Failed(format!("stopped while wave {wave} waited"))),
        }
    }
}

/// After this instance validated (or found the release serving here already): its validated marker,
/// and the next wave's go when every member of the waves so far validated. Never fails the deploy: a
/// go not written here is written by a waiting agent's safety-net list.
pub(super) async fn validated(agent: &Agent<'_>, group: &str, target: &Target, plan: &Plan) {
    let id = target.id();
    let token = target.token();
    if let Err(err) = write_validated(agent, &id, &token).await {
        tracing::warn!(release = %id, "cannot write the validated marker: {err}");
        return;
    }
    if plan.wave >= plan.total {
        return;
    }
    let gate = Gate::Wave {
        wave: plan.wave + 1,
        expect: plan.members_through(plan.wave),
    };
    let mut fleet = Fleet::new(agent, group, &id, token, gate);
    match fleet.check(Duration::ZERO).await {
        Ok(Barrier::Ready) => {
            tracing::info!(release = %id, "wave {} of {} validated: wave {} goes", plan.wave, plan.total, plan.wave + 1)
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(release = %id, "cannot look at wave {}: {err}", plan.wave),
    }
}
