//! Binding a free Elastic IP of the group's pool, race-free.
//!
//! The pool is every address tagged `embark:pool=<pool>`. Many instances boot at once (a scale-out, a
//! rolling replacement), so the choice among free addresses is shuffled, and the association itself is
//! the lock: `AssociateAddress` with `AllowReassociation=false` fails with `Resource.AlreadyAssociated`
//! when another instance won, and then the next candidate is tried. An address associated with anything
//! else is never taken.

use std::time::Duration;

use aws_sdk_ec2::types::{Address, Filter};
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::aws::{error_code, AwsError};
use crate::context::Instance;
use crate::retry::{retry, Failure, Policy, Verdict};
use crate::status::{self, Reported};

pub const POOL_TAG: &str = "embark:pool";
pub const AZ_TAG: &str = "embark:az";

/// What the step needs to know; built by the caller from flags, tags and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub pool: String,
    pub required: bool,
    pub wait: Duration,
    pub reserve: u32,
}

/// Where this instance is.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub instance_id: &'a str,
    pub az_name: &'a str,
    pub az_id: Option<&'a str>,
    /// The primary network interface and its private address, when IMDS names them: the association
    /// is made with them (an instance with several interfaces refuses an instance id alone).
    pub interface_id: Option<&'a str>,
    pub private_ip: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolAddress {
    pub allocation_id: String,
    pub public_ip: String,
    /// The instance holding it, if any.
    pub instance_id: Option<String>,
    /// The network interface holding it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
    /// Set when associated with anything (an instance or a network interface).
    pub association_id: Option<String>,
    /// `embark:az`: only for instances in this zone (name or id).
    pub zone: Option<String>,
}

impl PoolAddress {
    fn from_sdk(address: &Address) -> Option<PoolAddress> {
        let non_empty = |s: Option<&str>| s.filter(|v| !v.is_empty()).map(str::to_string);
        Some(PoolAddress {
            allocation_id: address.allocation_id()?.to_string(),
            public_ip: address.public_ip().unwrap_or_default().to_string(),
            instance_id: non_empty(address.instance_id()),
            network_interface_id: non_empty(address.network_interface_id()),
            association_id: non_empty(address.association_id()),
            zone: address
                .tags()
                .iter()
                .find(|t| t.key() == Some(AZ_TAG))
                .and_then(|t| non_empty(t.value())),
        })
    }

    /// Not associated with any instance or network interface.
    pub fn is_free(&self) -> bool {
        self.instance_id.is_none() && self.association_id.is_none()
    }

    pub fn allowed_in(&self, place: &Place) -> bool {
        match &self.zone {
            None => true,
            Some(zone) => zone == place.az_name || Some(zone.as_str()) == place.az_id,
        }
    }
}

/// The pool as DescribeAddresses shows it now.
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub name: String,
    pub addresses: Vec<PoolAddress>,
}

impl Pool {
    pub fn held_by(&self, instance_id: &str) -> Option<&PoolAddress> {
        self.addresses
            .iter()
            .find(|a| a.instance_id.as_deref() == Some(instance_id))
    }

    /// Held by this instance, or by its primary interface.
    pub fn held_here(&self, place: &Place) -> Option<&PoolAddress> {
        self.held_by(place.instance_id).or_else(|| {
            place.interface_id.and_then(|eni| {
                self.addresses
                    .iter()
                    .find(|a| a.network_interface_id.as_deref() == Some(eni))
            })
        })
    }

    pub fn free(&self) -> usize {
        self.addresses.iter().filter(|a| a.is_free()).count()
    }

    /// Free addresses this instance may take.
    pub fn candidates(&self, place: &Place) -> Vec<PoolAddress> {
        self.addresses
            .iter()
            .filter(|a| a.is_free() && a.allowed_in(place))
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Bound {
        address: PoolAddress,
        free: usize,
    },
    AlreadyBound {
        address: PoolAddress,
        free: usize,
    },
    /// Only when the pool is not required: nothing was free within the wait.
    NoneFree {
        total: usize,
        waited: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EipError {
    #[error("pool '{pool}' has no addresses: tag Elastic IPs with {POOL_TAG}={pool}")]
    NoAddresses { pool: String },
    #[error("the AWS region is {configured} but this instance runs in {instance}: Elastic IPs can only be bound in the instance's own region (unset AWS_REGION or set it to {instance})")]
    WrongRegion {
        configured: String,
        instance: String,
    },
    #[error("no free address in pool '{pool}' for {instance_id} in {zone} ({free} of {total} free in the pool{waited}); free one, add addresses tagged {POOL_TAG}={pool}, or set embark:eip-wait / embark:eip-required=false")]
    Exhausted {
        pool: String,
        instance_id: String,
        zone: String,
        total: usize,
        free: usize,
        waited: String,
    },
    #[error("no Elastic IP pool configured: set the group's embark:eip-pool tag, [eip] pool in the config file, or --pool")]
    NoPool,
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl EipError {
    /// Problems of configuration rather than of this moment: exit 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EipError::NoAddresses { .. } | EipError::WrongRegion { .. } | EipError::NoPool
        )
    }
}

/// Refuses to work across regions: DescribeAddresses would show another region's pool.
pub fn check_region(configured: &str, instance: &str) -> Result<(), EipError> {
    if configured != instance {
        return Err(EipError::WrongRegion {
            configured: configured.to_string(),
            instance: instance.to_string(),
        });
    }
    Ok(())
}

pub async fn describe_pool(ec2: &aws_sdk_ec2::Client, pool: &str) -> Result<Pool, EipError> {
    let out = ec2
        .describe_addresses()
        .filters(
            Filter::builder()
                .name(format!("tag:{POOL_TAG}"))
                .values(pool)
                .build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::new("ec2:DescribeAddresses", &e))?;
    let mut addresses: Vec<PoolAddress> = out
        .addresses()
        .iter()
        .filter_map(PoolAddress::from_sdk)
        .collect();
    addresses.sort_by(|a, b| a.public_ip.cmp(&b.public_ip));
    if addresses.is_empty() {
        return Err(EipError::NoAddresses {
            pool: pool.to_string(),
        });
    }
    Ok(Pool {
        name: pool.to_string(),
        addresses,
    })
}

/// One address as it is now.
async fn describe_one(
    ec2: &aws_sdk_ec2::Client,
    allocation_id: &str,
) -> Result<Option<PoolAddress>, EipError> {
    let out = ec2
        .describe_addresses()
        .allocation_ids(allocation_id)
        .send()
        .await
        .map_err(|e| AwsError::new("ec2:DescribeAddresses", &e))?;
    Ok(out.addresses().iter().find_map(PoolAddress::from_sdk))
}

enum Attempt {
    Won(PoolAddress),
    Lost,
}

/// Associates one candidate; `Lost` when another instance holds it.
///
/// A successful answer (it carries the association id) is the win: `DescribeAddresses` is eventually
/// consistent and may still show the address free for a moment, so it is not asked again. Only after
/// `Resource.AlreadyAssociated` does embark look, with a short backoff, whether the address is in fact
/// its own (an earlier attempt of this very call succeeded and its answer was lost).
async fn try_associate(
    ec2: &aws_sdk_ec2::Client,
    candidate: &PoolAddress,
    place: &Place<'_>,
) -> Result<Attempt, EipError> {
    let mut request = ec2
        .associate_address()
        .allocation_id(&candidate.allocation_id)
        .allow_reassociation(false);
    request = match place.interface_id {
        Some(eni) => request
            .network_interface_id(eni)
            .set_private_ip_address(place.private_ip.map(str::to_string)),
        None => request.instance_id(place.instance_id),
    };
    match request.send().await {
        Ok(answer) => {
            let mut won = candidate.clone();
            won.instance_id = Some(place.instance_id.to_string());
            won.network_interface_id = place.interface_id.map(str::to_string);
            won.association_id = answer.association_id().map(str::to_string);
            Ok(Attempt::Won(won))
        }
        Err(err) if error_code(&err) == Some("Resource.AlreadyAssociated") => {
            tracing::debug!(address = %candidate.public_ip, "already associated; checking with whom");
            is_it_ours(ec2, candidate, place).await
        }
        Err(err) => Err(AwsError::new("ec2:AssociateAddress", &err)
            .on(format!("for {}", candidate.public_ip))
            .into()),
    }
}

/// Already associated: ours (a lost answer), or another instance's. Looked at a few times over about
/// two seconds, since a describe right after the association may not show it yet.
async fn is_it_ours(
    ec2: &aws_sdk_ec2::Client,
    candidate: &PoolAddress,
    place: &Place<'_>,
) -> Result<Attempt, EipError> {
    let policy = Policy::new(
        Duration::from_millis(250),
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    let result = retry(
        policy,
        |_| async {
            match describe_one(ec2, &candidate.allocation_id).await {
                Ok(Some(now)) if now.instance_id.as_deref() == Some(place.instance_id) => {
                    Verdict::Done(Attempt::Won(now))
                }
                Ok(Some(now)) if now.instance_id.is_some() || now.association_id.is_some() => {
                    Verdict::Done(Attempt::Lost)
                }
                // Shown free: the association is not visible yet; look again.
                Ok(_) => Verdict::Retry(()),
                Err(err) => Verdict::Stop(err),
            }
        },
        |_| {},
    )
    .await;
    match result {
        Ok(attempt) => Ok(attempt),
        Err(Failure::Stopped(err)) => Err(err),
        Err(Failure::GaveUp { .. }) => Ok(Attempt::Lost),
    }
}

/// Binds a free address of the pool to this instance (see the module comment). Nothing free: wait
/// with backoff up to `settings.wait` for one to free up (a rolling replacement).
pub async fn bind(
    ec2: &aws_sdk_ec2::Client,
    place: &Place<'_>,
    settings: &Settings,
) -> Result<Outcome, EipError> {
    let policy = Policy::new(
        Duration::from_secs(1),
        Duration::from_secs(10),
        settings.wait,
    );
    let attempt = |_| async {
        let pool = match describe_pool(ec2, &settings.pool).await {
            Ok(pool) => pool,
            Err(err) => return Verdict::Stop(err),
        };
        if let Some(address) = pool.held_here(place) {
            return Verdict::Done(Outcome::AlreadyBound {
                address: address.clone(),
                free: pool.free(),
            });
        }
        let mut candidates = pool.candidates(place);
        candidates.shuffle(&mut rand::rng());
        for candidate in &candidates {
            match try_associate(ec2, candidate, place).await {
                Ok(Attempt::Won(address)) => {
                    // The free count from the listing just read, less this one: a describe now
                    // might not show the association yet.
                    let free = pool.free().saturating_sub(1);
                    return Verdict::Done(Outcome::Bound { address, free });
                }
                Ok(Attempt::Lost) => {
                    tracing::debug!(address = %candidate.public_ip, "taken by another instance; next candidate");
                }
                Err(err) => return Verdict::Stop(err),
            }
        }
        Verdict::Retry(pool)
    };
    let waiting = |w: &crate::retry::Waiting<'_, Pool>| {
        tracing::info!(
            pool = %settings.pool,
            "no free address ({} of {} free, none for this zone); waiting {:?} for one to free up",
            w.last.free(),
            w.last.addresses.len(),
            w.delay
        );
    };
    match retry(policy, attempt, waiting).await {
        Ok(outcome) => Ok(outcome),
        Err(Failure::Stopped(err)) => Err(err),
        Err(Failure::GaveUp { last, elapsed, .. }) => nothing_free(&last, elapsed, place, settings),
    }
}

/// No free address within the wait: fail when the pool is required, else say so and continue.
fn nothing_free(
    pool: &Pool,
    elapsed: Duration,
    place: &Place<'_>,
    settings: &Settings,
) -> Result<Outcome, EipError> {
    if !settings.required {
        return Ok(Outcome::NoneFree {
            total: pool.addresses.len(),
            waited: round(elapsed),
        });
    }
    Err(EipError::Exhausted {
        pool: settings.pool.clone(),
        instance_id: place.instance_id.to_string(),
        zone: place.az_name.to_string(),
        total: pool.addresses.len(),
        free: pool.free(),
        waited: if settings.wait.is_zero() {
            String::new()
        } else {
            format!(
                ", after waiting {}",
                humantime::format_duration(round(elapsed))
            )
        },
    })
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// What `bind` would do, read-only.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub pool: Pool,
    pub already_bound: Option<PoolAddress>,
    pub candidates: Vec<PoolAddress>,
    pub choice: Option<PoolAddress>,
}

pub async fn plan(
    ec2: &aws_sdk_ec2::Client,
    place: &Place<'_>,
    settings: &Settings,
) -> Result<Plan, EipError> {
    let pool = describe_pool(ec2, &settings.pool).await?;
    let already_bound = pool.held_here(place).cloned();
    let mut candidates = pool.candidates(place);
    candidates.shuffle(&mut rand::rng());
    let choice = if already_bound.is_some() {
        None
    } else {
        candidates.first().cloned()
    };
    Ok(Plan {
        pool,
        already_bound,
        candidates,
        choice,
    })
}

impl Plan {
    pub fn human(&self, place: &Place, settings: &Settings) -> String {
        let mut out = format!(
            "pool '{}': {}, {} free; {} in {}{}\n",
            self.pool.name,
            crate::output::count(self.pool.addresses.len() as u64, "address", "addresses"),
            self.pool.free(),
            place.instance_id,
            place.az_name,
            place.az_id.map(|id| format!(" ({id})")).unwrap_or_default()
        );
        for a in &self.pool.addresses {
            let state = match (&a.instance_id, a.is_free(), a.allowed_in(place)) {
                (Some(i), _, _) if i == place.instance_id => "bound here".to_string(),
                (Some(i), _, _) => format!("bound to {i}"),
                (None, false, _) => "associated (network interface)".to_string(),
                (None, true, true) => "free: candidate".to_string(),
                (None, true, false) => "free, but not for this zone".to_string(),
            };
            let zone = a
                .zone
                .as_deref()
                .map(|z| format!(" [{AZ_TAG}={z}]"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<16} {:<28} {state}{zone}\n",
                a.public_ip, a.allocation_id
            ));
        }
        match (&self.already_bound, &self.choice) {
            (Some(a), _) => out.push_str(&format!(
                "plan: nothing to do, {} ({}) is already bound here\n",
                a.public_ip, a.allocation_id
            )),
            (None, Some(c)) => out.push_str(&format!(
                "plan: associate one of the {} with {} (AllowReassociation=false), tried in random order; first draw: {} ({})\n",
                crate::output::count(self.candidates.len() as u64, "candidate", "candidates"),
                place.instance_id,
                c.public_ip,
                c.allocation_id
            )),
            (None, None) => out.push_str(&format!(
                "plan: no free address for this instance; {}\n",
                if settings.wait.is_zero() {
                    if settings.required {
                        "the step would fail (required)".to_string()
                    } else {
                        "the boot would continue without one (not required)".to_string()
                    }
                } else {
                    format!(
                        "would wait up to {} for one",
                        humantime::format_duration(settings.wait)
                    )
                }
            )),
        }
        out
    }
}

/// `embark eip status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub pool: String,
    pub total: usize,
    pub free: usize,
    /// Free and allowed in this instance's zone.
    pub free_here: usize,
    pub bound_here: Option<PoolAddress>,
    pub reserve: u32,
    pub below_reserve: bool,
    pub addresses: Vec<PoolAddress>,
}

impl Status {
    pub fn new(pool: Pool, place: &Place, reserve: u32) -> Status {
        let free = pool.free();
        Status {
            total: pool.addresses.len(),
            free,
            free_here: pool.candidates(place).len(),
            bound_here: pool.held_here(place).cloned(),
            reserve,
            below_reserve: below_reserve(free, reserve),
            pool: pool.name,
            addresses: pool.addresses,
        }
    }

    pub fn human(&self) -> String {
        let mut out = format!(
            "pool '{}': {}, {} free ({} for this zone)\n",
            self.pool,
            crate::output::count(self.total as u64, "address", "addresses"),
            self.free,
            self.free_here
        );
        match &self.bound_here {
            Some(a) => out.push_str(&format!(
                "bound here: {} ({})\n",
                a.public_ip, a.allocation_id
            )),
            None => out.push_str("bound here: none\n"),
        }
        if self.below_reserve {
            out.push_str(&format!(
                "warning: {} free, below the reserve of {}\n",
                self.free, self.reserve
            ));
        }
        out
    }
}

/// The step's settings: the pool from `--pool`, else the group's tag (already applied to the
/// config), else the file. `None`: no pool is configured, so there is no EIP step.
pub fn settings(config: &crate::config::Config, flag: Option<&str>) -> Option<Settings> {
    let pool = flag
        .map(str::to_string)
        .or_else(|| config.eip.pool.clone())
        .filter(|p| !p.trim().is_empty())?;
    Some(Settings {
        pool,
        required: config.eip.required,
        wait: config.eip.wait,
        reserve: config.eip.reserve,
    })
}

/// What the step did, for the report and stdout.
#[derive(Debug, Clone)]
pub enum StepOutcome {
    /// No pool configured for this instance.
    NotConfigured,
    /// `--plan`: what it would do.
    Planned { plan: Plan, text: String },
    Done {
        outcome: Outcome,
        settings: Settings,
    },
}

impl Reported for StepOutcome {
    fn status(&self) -> status::Outcome {
        match self {
            StepOutcome::NotConfigured => status::Outcome::Skipped,
            StepOutcome::Planned { .. } => status::Outcome::Planned,
            StepOutcome::Done { .. } => status::Outcome::Ok,
        }
    }

    fn detail(&self) -> String {
        match self {
            StepOutcome::NotConfigured => {
                "no pool configured (embark:eip-pool tag or [eip] pool)".to_string()
            }
            StepOutcome::Planned { text, .. } => text.clone(),
            StepOutcome::Done { outcome, settings } => outcome.human(settings),
        }
    }
}

impl Outcome {
    pub fn human(&self, settings: &Settings) -> String {
        match self {
            Outcome::Bound { address, free } => format!(
                "bound {} ({}) from pool '{}'; {free} of the pool's addresses free",
                address.public_ip, address.allocation_id, settings.pool
            ),
            Outcome::AlreadyBound { address, .. } => format!(
                "already bound: {} ({}) from pool '{}'; nothing to do",
                address.public_ip, address.allocation_id, settings.pool
            ),
            Outcome::NoneFree { .. } => format!(
                "no free address in pool '{}'; continuing without one (not required)",
                settings.pool
            ),
        }
    }

    fn free(&self) -> Option<usize> {
        match self {
            Outcome::Bound { free, .. } | Outcome::AlreadyBound { free, .. } => Some(*free),
            Outcome::NoneFree { .. } => None,
        }
    }
}

/// The step: bind (or plan) an address of the instance's pool. `pool` is `--pool`, if given.
pub async fn step(
    instance: &Instance,
    pool: Option<&str>,
    plan: bool,
) -> Result<StepOutcome, EipError> {
    let Some(settings) = settings(&instance.config, pool) else {
        return Ok(StepOutcome::NotConfigured);
    };
    let place = place(instance);
    check_region(&instance.aws.region(), &instance.identity.metadata.region)?;
    let ec2 = instance.aws.ec2();
    if plan {
        let plan = self::plan(&ec2, &place, &settings).await?;
        let text = plan.human(&place, &settings);
        return Ok(StepOutcome::Planned { plan, text });
    }
    let outcome = bind(&ec2, &place, &settings).await?;
    match &outcome {
        Outcome::NoneFree { total, waited } => tracing::warn!(
            pool = %settings.pool,
            "no free address in pool '{}' ({total} addresses, waited {}); continuing without one because it is not required",
            settings.pool,
            humantime::format_duration(*waited)
        ),
        _ => {
            if let Some(free) = outcome
                .free()
                .filter(|free| below_reserve(*free, settings.reserve))
            {
                tracing::warn!(
                    pool = %settings.pool,
                    "pool '{}' has {} left, below its reserve of {}: add addresses tagged {POOL_TAG}={}",
                    settings.pool,
                    crate::output::count(free as u64, "free address", "free addresses"),
                    settings.reserve,
                    settings.pool
                );
            }
        }
    }
    Ok(StepOutcome::Done { outcome, settings })
}

fn below_reserve(free: usize, reserve: u32) -> bool {
    (free as u64) < u64::from(reserve)
}

/// Where this instance is, for the pool's zone rules.
pub fn place(instance: &Instance) -> Place<'_> {
    let meta = &instance.identity.metadata;
    Place {
        instance_id: &meta.instance_id,
        az_name: &meta.availability_zone,
        az_id: meta.availability_zone_id.as_deref(),
        interface_id: meta.interface_id.as_deref(),
        private_ip: meta.private_ipv4.as_deref(),
    }
}

/// Gives this instance's address back to its pool (an instance going into a warm pool must not hold
/// one while it is stopped); `None` when it held none.
pub async fn give_back(instance: &Instance) -> Result<Option<PoolAddress>, EipError> {
    let Some(settings) = settings(&instance.config, None) else {
        return Ok(None);
    };
    let ec2 = instance.aws.ec2();
    let pool = describe_pool(&ec2, &settings.pool).await?;
    let Some(held) = pool.held_here(&place(instance)).cloned() else {
        return Ok(None);
    };
    let Some(association) = held.association_id.clone() else {
        return Ok(None);
    };
    ec2.disassociate_address()
        .association_id(&association)
        .send()
        .await
        .map_err(|e| {
            AwsError::new("ec2:DisassociateAddress", &e).on(format!("for {}", held.public_ip))
        })?;
    Ok(Some(held))
}

/// `embark eip status`: the pool as it is now, seen from this instance.
pub async fn status(instance: &Instance, pool: Option<&str>) -> Result<Status, EipError> {
    let settings = settings(&instance.config, pool).ok_or(EipError::NoPool)?;
    check_region(&instance.aws.region(), &instance.identity.metadata.region)?;
    let found = describe_pool(&instance.aws.ec2(), &settings.pool).await?;
    Ok(Status::new(found, &place(instance), settings.reserve))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(id: &str, instance: Option<&str>, zone: Option<&str>) -> PoolAddress {
        PoolAddress {
            allocation_id: id.to_string(),
            public_ip: format!("198.51.100.{}", id.len()),
            instance_id: instance.map(str::to_string),
            network_interface_id: None,
            association_id: instance.map(|_| "eipassoc-1".to_string()),
            zone: zone.map(str::to_string),
        }
    }

    const PLACE: Place = Place {
        instance_id: "i-me",
        az_name: "eu-west-1a",
        az_id: Some("euw1-az3"),
        interface_id: Some("eni-me"),
        private_ip: Some("10.0.0.5"),
    };

    #[test]
    fn candidates_are_free_and_allowed_here() {
        let pool = Pool {
            name: "web".into(),
            addresses: vec![
                addr("a", None, None),
                addr("b", Some("i-other"), None),
                addr("c", None, Some("eu-west-1a")),
                addr("d", None, Some("euw1-az3")),
                addr("e", None, Some("eu-west-1b")),
                addr("f", None, Some("euw1-az1")),
            ],
        };
        let ids: Vec<_> = pool
            .candidates(&PLACE)
            .into_iter()
            .map(|a| a.allocation_id)
            .collect();
        assert_eq!(ids, vec!["a", "c", "d"]);
        assert_eq!(pool.free(), 5);
        assert!(pool.held_by("i-me").is_none());
        assert_eq!(pool.held_by("i-other").unwrap().allocation_id, "b");
    }

    #[test]
    fn an_address_on_a_network_interface_is_not_free() {
        let mut a = addr("a", None, None);
        a.association_id = Some("eipassoc-eni".into());
        assert!(!a.is_free());
    }

    #[test]
    fn status_flags_below_reserve() {
        let pool = Pool {
            name: "web".into(),
            addresses: vec![addr("a", None, None), addr("b", Some("i-me"), None)],
        };
        let status = Status::new(pool, &PLACE, 2);
        assert_eq!((status.total, status.free, status.free_here), (2, 1, 1));
        assert!(status.below_reserve);
        assert_eq!(status.bound_here.unwrap().allocation_id, "b");
    }

    #[test]
    fn region_mismatch_is_a_usage_error() {
        let err = check_region("us-east-1", "eu-west-1").unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("us-east-1"));
        assert!(check_region("eu-west-1", "eu-west-1").is_ok());
    }
}
