//! `[watch] rollout`: the waves a deploy switches in (docs/deploys.md, "Waves"). Every agent computes
//! the same waves from the same inputs — the barrier's member list and the deploy token — so no
//! coordination beyond the barrier is needed to agree on who switches when.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One wave's size: a number of instances, or a share of the group (rounded up), cumulative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Count(u32),
    Percent(u32),
}

/// The waves, in order; the last always reaches 100 %.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Rollout(Vec<Size>);

impl Default for Rollout {
    /// One wave: the whole group switches together (the barrier).
    fn default() -> Self {
        Rollout(vec![Size::Percent(100)])
    }
}

impl TryFrom<Vec<String>> for Rollout {
    type Error = String;

    fn try_from(waves: Vec<String>) -> Result<Self, String> {
        if waves.is_empty() {
            return Err("needs at least one wave, such as [\"100%\"]".into());
        }
        let mut sizes = Vec::new();
        for wave in &waves {
            let text = wave.trim();
            let size = match text.strip_suffix('%') {
                Some(number) => match number.trim().parse::<u32>() {
                    Ok(p) if (1..=100).contains(&p) => Size::Percent(p),
                    _ => return Err(format!("{wave:?} is not a share from \"1%\" to \"100%\"")),
                },
                None => match text.parse::<u32>() {
                    Ok(n) if n >= 1 => Size::Count(n),
                    _ => {
                        return Err(format!(
                        "{wave:?} is neither a number of instances (\"1\") nor a share (\"25%\")"
                    ))
                    }
                },
            };
            sizes.push(size);
        }
        if sizes.last() != Some(&Size::Percent(100)) {
            return Err(format!(
                "the last wave must be \"100%\" (it is {:?}): every instance switches in the end",
                waves.last().map(String::as_str).unwrap_or_default()
            ));
        }
        Ok(Rollout(sizes))
    }
}

impl From<Rollout> for Vec<String> {
    fn from(rollout: Rollout) -> Vec<String> {
        rollout.to_strings()
    }
}

impl Rollout {
    fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|size| match size {
                Size::Count(n) => n.to_string(),
                Size::Percent(p) => format!("{p}%"),
            })
            .collect()
    }

    /// More than one wave: the deploy is gated wave by wave.
    pub fn is_staged(&self) -> bool {
        self.0.len() > 1
    }

    pub fn describe(&self) -> String {
        format!("[{}]", self.to_strings().join(", "))
    }

    /// How many members are switched once wave k (0-based) is through, for a group of `n`: each wave
    /// adds at least one member (a wave is never empty), and waves that would add nobody are dropped.
    fn cumulative(&self, n: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for size in &self.0 {
            let reach = match *size {
                Size::Count(c) => c as usize,
                Size::Percent(p) => (n * p as usize).div_ceil(100),
            };
            let before = out.last().copied().unwrap_or(0);
            if before >= n {
                break;
            }
            out.push(reach.clamp(before + 1, n));
        }
        out
    }

    /// The waves for these members: each member's place is the order of sha256(token + instance id),
    /// the same on every agent, different at every deploy (the canary is not always the same machine).
    pub fn waves(&self, members: &BTreeSet<String>, token: &str) -> Vec<Vec<String>> {
        let mut order: Vec<(String, &String)> = members
            .iter()
            .map(|id| {
                let digest = Sha256::digest(format!("{token}{id}").as_bytes());
                (hex::encode(digest), id)
            })
            .collect();
        order.sort();
        let mut waves = Vec::new();
        let mut start = 0;
        for end in self.cumulative(members.len()) {
            waves.push(
                order[start..end]
                    .iter()
                    .map(|(_, id)| (*id).clone())
                    .collect(),
            );
            start = end;
        }
        waves
    }
}

/// Which wave (1-based) `instance` is in, out of how many; an instance that is not a member (it joined
/// after the barrier) goes with the last wave.
pub fn wave_of(waves: &[Vec<String>], instance: &str) -> (usize, usize) {
    let total = waves.len().max(1);
    let wave = waves
        .iter()
        .position(|wave| wave.iter().any(|id| id == instance))
        .map_or(total, |k| k + 1);
    (wave, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(waves: &[&str]) -> Result<Rollout, String> {
        Rollout::try_from(waves.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn members(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("i-{i:04}")).collect()
    }

    #[test]
    fn sizes_round_up_and_no_wave_is_empty() {
        let r = rollout(&["1", "25%", "100%"]).unwrap();
        assert_eq!(r.cumulative(10), vec![1, 3, 10]);
        assert_eq!(r.cumulative(200), vec![1, 50, 200]);
        // 25 % of 2 is 1, already reached by the canary: the wave still adds one.
        assert_eq!(r.cumulative(2), vec![1, 2]);
        assert_eq!(r.cumulative(1), vec![1]);
        assert_eq!(r.cumulative(0), Vec::<usize>::new());
        let canary = rollout(&["1", "100%"]).unwrap();
        assert_eq!(canary.cumulative(3), vec![1, 3]);
        assert_eq!(Rollout::default().cumulative(7), vec![7]);
        assert_eq!(rollout(&["10%", "100%"]).unwrap().cumulative(3), vec![1, 3]);
    }

    #[test]
    fn every_member_is_in_exactly_one_wave_and_all_agents_agree() {
        let r = rollout(&["1", "10%", "100%"]).unwrap();
        let m = members(200);
        let waves = r.waves(&m, "token-a");
        assert_eq!(
            waves.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 19, 180]
        );
        let all: BTreeSet<String> = waves.iter().flatten().cloned().collect();
        assert_eq!(all, m);
        assert_eq!(waves, r.waves(&m, "token-a"), "the same on every agent");
        assert_ne!(
            waves[0],
            r.waves(&m, "token-b")[0],
            "another deploy, another canary (this pair of tokens differs)"
        );
        let canary = &waves[0][0];
        assert_eq!(wave_of(&waves, canary), (1, 3));
        assert_eq!(wave_of(&waves, "i-joined-late"), (3, 3));
    }

    #[test]
    fn bad_rollouts_are_refused_with_the_reason() {
        for (waves, needle) in [
            (vec![], "at least one wave"),
            (vec!["1", "50%"], "last wave must be \"100%\""),
            (vec!["0", "100%"], "neither a number"),
            (vec!["x", "100%"], "neither a number"),
            (vec!["150%", "100%"], "from \"1%\""),
            (vec!["0%", "100%"], "from \"1%\""),
        ] {
            let err = rollout(&waves).unwrap_err();
            assert!(err.contains(needle), "{waves:?}: {err}");
        }
        assert_eq!(
            rollout(&["1", " 25 %", "100%"]).unwrap().describe(),
            "[1, 25%, 100%]"
        );
    }
}
