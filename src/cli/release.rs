//! The `embark release` commands: configuration in, a report out. The command line (`cli/mod.rs`)
//! parses the arguments and calls one of these; the work is `crate::release`'s.

use std::collections::BTreeSet;
use std::path::Path;

use crate::aws::Aws;
use crate::config::Config;
use crate::context::{Context, ContextError};
use crate::error::Error;
use crate::output::{print_either, say, say_line};
use crate::release::format::SourceUrl;
use crate::release::install::{read_target, Pipeline, Planned, Settings};
use crate::release::listing::{list, Listing};
use crate::release::publish::sign::{Signer, SigningKey};
use crate::release::publish::{push, rollback};
use crate::release::store::Store;
use crate::release::{layout, manifest, settings, store_of, trust, ReleaseError};

/// The store a command names with `--to` / `--from`, reached without asking IMDS (a laptop, CI).
pub async fn standalone_store(ctx: &Context, url: &str) -> Result<Store, ReleaseError> {
    let source = SourceUrl::parse(url).map_err(ReleaseError::Usage)?;
    let aws = Aws::load_standalone(ctx.http.clone()).await;
    Ok(Store::new(&aws, source))
}

/// How long a command that can run without an instance (`release list`, `verify`, `rollback`) asks
/// IMDS for the instance's source before saying how to name one.
const WORKSTATION_IMDS: std::time::Duration = std::time::Duration::from_secs(3);

/// The store `--from URL` names (reached without IMDS, with the file's settings), else the instance's
/// source (its tags on the file's settings).
async fn store_from(ctx: &Context, from: Option<&str>) -> Result<(Store, Config), Error> {
    Ok(match from {
        Some(url) => (standalone_store(ctx, url).await?, ctx.config.clone()),
        None => {
            let instance = match ctx.instance_within(WORKSTATION_IMDS).await {
                Ok(instance) => instance,
                Err(ContextError::Identity(err)) => {
                    return Err(Error::Usage(format!(
                        "{err}; not on an EC2 instance? Name the source with --from s3://bucket/prefix (its region from AWS_REGION or [release] region)"
                    )))
                }
                Err(err) => return Err(err.into()),
            };
            (store_of(&instance.aws, &instance.config)?, instance.config)
        }
    })
}

/// `release push DIR --to URL [--sign KEY]`.
pub async fn push_release(
    ctx: &Context,
    dir: &Path,
    to: &str,
    message: &str,
    sign: Option<&str>,
) -> Result<(), Error> {
    let key = sign.map(SigningKey::parse).transpose()?;
    let source = SourceUrl::parse(to).map_err(ReleaseError::Usage)?;
    if source.prefix.is_empty() {
        tracing::warn!(
            "{source} names no prefix: the release is published at the bucket's root (`current`, `releases/`, `objects/`); name one, such as {source}/app, to keep applications apart"
        );
    }
    let aws = Aws::load_standalone(ctx.http.clone()).await;
    let signer = key.map(|key| {
        let kms =
            matches!(key, SigningKey::Kms { .. }).then(|| aws_sdk_kms::Client::new(&aws.config));
        Signer { key, kms }
    });
    let store = Store::new(&aws, source);
    let pushed = push::push(&store, dir, message, signer.as_ref()).await?;
    say(&pushed.human(&store.source.to_string()));
    Ok(())
}

/// `release pull [--plan] [--json]`.
pub async fn pull_release(
    ctx: &Context,
    plan: bool,
    json: bool,
    retry_failed: bool,
) -> Result<(), Error> {
    let instance = ctx.instance().await?;
    let store = store_of(&instance.aws, &instance.config)?;
    let settings = Settings {
        retry_failed,
        ..settings(&instance.config)?
    };
    let http = ctx.http_client()?;
    // The same bound as the boot's: a pull run by hand or by a script ends.
    let deadline = instance.config.deadline;
    let pipeline = Pipeline::new(&store, &settings, &http);
    let pull = async {
        let target = read_target(&store, settings.format).await?;
        if plan {
            let target = pipeline.avoid(target).await?;
            pipeline.plan(&target).await
        } else {
            let resolved = pipeline.resolve(target).await?;
            pipeline.install(resolved).await.map(Planned::Current)
        }
    };
    let planned = tokio::select! {
        planned = tokio::time::timeout(deadline, pull) => planned,
        signal = interrupted() => return Err(left_behind(&settings.layout, signal).into()),
    };
    if let Ok(Err(err)) = &planned {
        notify_failure(&instance, err).await;
    }
    let planned = planned
        .map_err(|_| {
            ReleaseError::Failed(format!(
                "the pull did not finish within the deadline of {} (`deadline` in the config file); current is unchanged unless it says otherwise above",
                humantime::format_duration(deadline)
            ))
        })??;
    match planned {
        Planned::Would(text) => say_line(&text),
        Planned::Current(pulled) => print_either(&pulled, json, |p| p.human(&settings.layout.link)),
    }
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM: the pull is dropped between two awaits (the lock goes with the
/// process; a switch under way is completed by the next run, as after a crash).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// What an interrupted pull leaves: the files it fetched, kept for the next pull of that release.
fn left_behind(layout: &crate::release::layout::Layout, signal: &str) -> ReleaseError {
    let partial = std::fs::read_dir(layout.releases())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(crate::release::layout::PARTIAL_PREFIX)
            })
        });
    let kept = match partial {
        Some(dir) => {
            let files = files_below(&dir);
            format!(
                "{} fetched so far stay in {} and are reused (each checked again) by the next pull",
                crate::output::count(files, "file", "files"),
                dir.display()
            )
        }
        None => "nothing had been fetched yet".to_string(),
    };
    ReleaseError::Failed(format!(
        "the pull was interrupted ({signal}): {kept}; {} is unchanged unless it says otherwise above",
        layout.link
    ))
}

/// Regular files below `dir`.
fn files_below(dir: &std::path::Path) -> u64 {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => count += 1,
                _ => {}
            }
        }
    }
    count
}

/// A release that went live and failed (rolled back), or failed its prepare hooks: one message to the
/// error topic, as the agent sends (other failures change nothing live and are the command's own).
async fn notify_failure(instance: &crate::context::Instance, err: &ReleaseError) {
    let (ReleaseError::RolledBack { .. }
    | ReleaseError::PrepareFailed { .. }
    | ReleaseError::NotValidated { .. }) = err
    else {
        return;
    };
    let Some(topic) = &instance.config.notify.error_topic else {
        return;
    };
    let subject = crate::notify::subject(instance.group(), instance.id(), "release failed");
    if let Err(why) = crate::notify::publish(&instance.aws, topic, &subject, &err.to_string()).await
    {
        tracing::warn!("{why}");
    }
}

/// `release watch`: the deploy agent, until SIGTERM or SIGINT.
pub async fn run_agent(
    ctx: &Context,
    after_poll: impl FnOnce(&crate::context::Instance) -> Option<crate::release::agent::AfterPoll>,
) -> Result<(), Error> {
    let instance = ctx.instance().await?;
    let config = &instance.config;
    let store = store_of(&instance.aws, config)?;
    let settings = settings(config)?;
    let http = ctx.http_client()?;
    let agent = crate::release::agent::Agent {
        store: &store,
        settings: &settings,
        http: &http,
        aws: &instance.aws,
        instance_id: instance.id().to_string(),
        group: instance.group().map(str::to_string),
        watch: config.watch.clone(),
        success_topic: config.notify.success_topic.clone(),
        error_topic: config.notify.error_topic.clone(),
        barrier_noted: Default::default(),
        state_dir: ctx.config.state_dir.clone(),
        after_poll: after_poll(&instance),
        once_lease: config.release.once_lease,
        roster: Default::default(),
    };
    crate::release::agent::run(&agent).await?;
    Ok(())
}

/// `release rollback [--to ID] [--from URL]`.
pub async fn rollback_release(
    ctx: &Context,
    to: Option<&str>,
    from: Option<&str>,
) -> Result<(), Error> {
    let (store, config) = store_from(ctx, from).await?;
    let trust = trust(&config)?;
    let (from_id, to_id) = rollback::rollback(&store, to, &trust).await?;
    say_line(&format!(
        "{} now points at {to_id} (was {from_id}); the agents switch the fleet through the barrier",
        store.source
    ));
    Ok(())
}

/// `release verify [--from URL] [ID]`: the signature against today's trusted keys, then the manifest
/// against the signed sha256 and every rule a pull applies; nothing is installed.
pub async fn verify_release(
    ctx: &Context,
    id: Option<&str>,
    from: Option<&str>,
) -> Result<(), Error> {
    let (store, config) = store_from(ctx, from).await?;
    let mut trust = trust(&config)?;
    if trust.keys.is_empty() {
        return Err(ReleaseError::Usage(
            "no trusted keys to verify with: set [release] trusted_keys (docs/signing.md)".into(),
        )
        .into());
    }
    trust.required = true;
    let (pointer, verified) = match id {
        None => {
            let pointer = manifest::read_pointer(&store).await?;
            let verified = manifest::read(&store, &pointer, &trust, None).await?;
            (pointer, verified)
        }
        Some(id) => {
            let (pointer, bytes) = manifest::pointer_for(&store, id).await?;
            let verified = manifest::read_fetched(&store, &pointer, &trust, bytes)?;
            (pointer, verified)
        }
    };
    let files = verified.files();
    let signature = pointer.signature.unwrap_or_default();
    say_line(&format!(
        "release {} at {}: signed by key {} ({}), manifest verified ({files} files)",
        pointer.release, store.source, signature.key_id, signature.signer
    ));
    Ok(())
}

/// `release list [--from URL] [--json]`.
pub async fn list_releases(ctx: &Context, from: Option<&str>, json: bool) -> Result<(), Error> {
    let (store, config) = store_from(ctx, from).await?;
    let listing = list(&store, &layout(&config)).await?;
    print_either(&listing, json, Listing::human);
    Ok(())
}

/// How often `release status --wait` looks again (a GET and a list), and asks Auto Scaling again.
const STATUS_POLL: std::time::Duration = std::time::Duration::from_secs(2);
const STATUS_ASG_EVERY: std::time::Duration = std::time::Duration::from_secs(15);
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// `release status [--from URL] [--json] [--wait [--timeout D]]`: runs anywhere with credentials; the
/// source is `--from`, else the configuration's (no instance metadata is asked).
pub async fn fleet_status(
    ctx: &Context,
    from: Option<&str>,
    json: bool,
    wait: bool,
    timeout: Option<std::time::Duration>,
) -> Result<(), Error> {
    use crate::release::overview::{self, Overview, Verdict};
    use std::io::IsTerminal;
    let url = from
        .map(str::to_string)
        .or_else(|| ctx.config.release.source.clone())
        .ok_or_else(|| {
            Error::Usage(
                "name the release source with --from s3://bucket/prefix (or set [release] source)"
                    .into(),
            )
        })?;
    let source = SourceUrl::parse(&url).map_err(ReleaseError::Usage)?;
    let aws = Aws::load_standalone(ctx.http.clone()).await;
    let store = Store::new(&aws, source).in_region(ctx.config.release.region.as_deref());
    // The group's InService instances, asked again at most every STATUS_ASG_EVERY; a failure (no
    // autoscaling:DescribeAutoScalingGroups where this runs) is said once, and every reporting agent
    // is shown instead.
    let asked = tokio::sync::Mutex::new(None::<(std::time::Instant, Option<BTreeSet<String>>)>);
    let asked = &asked;
    let aws = &aws;
    let read = || async {
        overview::read(&store, |group| async move {
            let mut asked = asked.lock().await;
            if let Some((at, set)) = asked.as_ref() {
                if at.elapsed() < STATUS_ASG_EVERY {
                    return set.clone();
                }
            }
            let set = match crate::lifecycle::in_service(aws, &group).await {
                Ok(set) => Some(set),
                Err(err) => {
                    if asked.is_none() {
                        tracing::warn!("{err}; showing every agent that reports instead");
                    }
                    None
                }
            };
            *asked = Some((std::time::Instant::now(), set.clone()));
            set
        })
        .await
    };
    let first = read().await?;
    if !wait {
        print_either(&first, json, Overview::human);
        return Ok(());
    }
    let Some(release) = first.pointer.as_ref().map(|p| p.release.clone()) else {
        print_either(&first, json, Overview::human);
        return Err(Error::Failed(format!(
            "nothing was pushed to {url}: nothing to wait for"
        )));
    };
    let limit = timeout.unwrap_or(STATUS_WAIT);
    let started = std::time::Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(first.summary.instances as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let mut overview = first;
    let mut said = String::new();
    let verdict = loop {
        let verdict = overview.verdict(&release);
        let line = overview.summary.text.clone();
        match &bar {
            Some(bar) => {
                bar.set_length(overview.summary.instances as u64);
                bar.set_position(overview.summary.on_pointer as u64);
                bar.set_message(line);
            }
            None if line != said => {
                // Progress on stderr: stdout holds the final report (the JSON one with --json).
                eprintln!("{line}");
                said = line;
            }
            None => {}
        }
        if verdict != Verdict::Pending {
            break verdict;
        }
        if started.elapsed() >= limit {
            break Verdict::Failed(format!(
                "release {release} did not converge within {}: {}",
                humantime::format_duration(limit),
                overview.summary.text
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_POLL) => {},
            _ = tokio::signal::ctrl_c() => break Verdict::Failed("interrupted".into()),
        }
        overview = read().await?;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_either(&overview, json, Overview::human);
    match verdict {
        Verdict::Failed(why) => Err(Error::Failed(why)),
        _ => Ok(()),
    }
}
