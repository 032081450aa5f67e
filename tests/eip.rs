//! `embark eip bind` / `eip status` against the emulator: pool rules, zones, waiting, races, bad input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{assert_has, emulator, unique, Embark, Emulator, Instance};
use serde_json::{json, Value};

fn holder_of(addresses: &[Value], instance: &str) -> Vec<String> {
    addresses
        .iter()
        .filter(|a| a["instance_id"] == instance)
        .map(|a| a["allocation_id"].as_str().unwrap().to_string())
        .collect()
}

/// `bound 198.51.100.7 (eipalloc-…) from pool …` → the allocation id.
fn bound_allocation(stdout: &str) -> Option<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("bound ") || l.starts_with("already bound"))?;
    let start = line.find("(eipalloc-")? + 1;
    let end = start + line[start..].find(')')?;
    Some(line[start..end].to_string())
}

fn associate_calls(emu: &Emulator, instance: &str) -> Vec<Value> {
    emu.requests_of("AssociateAddress")
        .into_iter()
        .filter(|r| r["params"]["InstanceId"] == instance)
        .collect()
}

fn standalone(emu: &Emulator, az: &str) -> Instance {
    emu.launch_one(json!({"az": az}))
}

#[test]
fn binds_from_the_group_pool_and_a_rerun_changes_nothing() {
    let emu = emulator();
    let group = unique("eipgrp");
    emu.seed(json!({"name": group, "pool_size": 4}));
    let other_pool = format!("{group}-other");
    let others = emu.allocate(json!({"pool": other_pool, "count": 2}));
    let untagged = emu.allocate(json!({"count": 2}));
    let inst = emu.launch_one(json!({"group": group}));

    let first = Embark::new(emu, &inst).run(&["eip", "bind"]).expect_code(0);
    let alloc = bound_allocation(&first.stdout()).expect("bound line");
    assert_eq!(
        holder_of(&emu.addresses(&group), &inst.id),
        vec![alloc.clone()]
    );

    let second = Embark::new(emu, &inst).run(&["eip", "bind"]).expect_code(0);
    assert!(
        second.stdout().starts_with("already bound"),
        "{}",
        second.stdout()
    );
    assert_eq!(bound_allocation(&second.stdout()), Some(alloc.clone()));
    assert_eq!(
        associate_calls(emu, &inst.id).len(),
        1,
        "the rerun associated again"
    );

    for a in emu.addresses(&other_pool) {
        assert!(
            a["instance_id"].is_null(),
            "another pool's address was touched: {a}"
        );
    }
    let all = emu.addresses("");
    for id in untagged.iter().chain(others.iter()) {
        let a = all
            .iter()
            .find(|a| a["allocation_id"] == id["allocation_id"])
            .unwrap();
        assert!(
            a["instance_id"].is_null(),
            "untouchable address was touched: {a}"
        );
    }
    // The IMDS view follows: the instance now has the pool's address as its public IP.
    let ip = emu
        .addresses(&group)
        .into_iter()
        .find(|a| a["allocation_id"] == alloc.as_str())
        .unwrap()["public_ip"]
        .clone();
    assert_eq!(emu.instance(&inst.id)["public_ipv4"], ip);
}

#[test]
fn zone_restricted_addresses_are_honoured_by_name_and_by_id() {
    let emu = emulator();
    let account =
        emu.seed(json!({"name": unique("eipaz"), "pool_size": 0, "lifecycle_hook": false}));
    let zone_id_b = account["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["availability_zone"] == "eu-west-1b")
        .map(|s| s["availability_zone_id"].as_str().unwrap().to_string())
        .unwrap();
    let pool = unique("azpool");
    let by_name =
        emu.allocate(json!({"pool": pool, "az": "eu-west-1a"}))[0]["allocation_id"].clone();
    let by_id = emu.allocate(json!({"pool": pool, "az": zone_id_b}))[0]["allocation_id"].clone();

    let in_b = standalone(emu, "eu-west-1b");
    let run = Embark::new(emu, &in_b)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert_eq!(bound_allocation(&run.stdout()).as_deref(), by_id.as_str());

    let in_a = standalone(emu, "eu-west-1a");
    let run = Embark::new(emu, &in_a)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert_eq!(bound_allocation(&run.stdout()).as_deref(), by_name.as_str());

    // Nothing left for zone b, although nothing is free anywhere else either.
    let another_b = standalone(emu, "eu-west-1b");
    let run = Embark::new(emu, &another_b)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(1);
    assert_has(&run.stderr(), "no free address");
}

#[test]
fn zone_restriction_excludes_other_zones_even_when_free() {
    let emu = emulator();
    let pool = unique("azonly");
    emu.allocate(json!({"pool": pool, "az": "eu-west-1a", "count": 2}));
    let in_b = standalone(emu, "eu-west-1b");
    let run = Embark::new(emu, &in_b)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(1);
    assert_has(&run.stderr(), "2 of 2 free");
    assert!(emu
        .addresses(&pool)
        .iter()
        .all(|a| a["instance_id"].is_null()));
}

#[test]
fn exhausted_pool_fails_when_required_and_warns_when_not() {
    let emu = emulator();
    let pool = unique("full");
    emu.allocate(json!({"pool": pool, "count": 1}));
    let holder = standalone(emu, "eu-west-1a");
    Embark::new(emu, &holder)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    let before = emu.addresses(&pool);

    let late = standalone(emu, "eu-west-1a");
    let run = Embark::new(emu, &late)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(1);
    let err = run.stderr();
    assert!(
        err.contains(&format!("no free address in pool '{pool}'")),
        "{err}"
    );
    assert!(
        err.contains("embark:eip-required=false"),
        "says what to do: {err}"
    );
    assert_eq!(emu.addresses(&pool), before, "an address changed");
    assert!(associate_calls(emu, &late.id).is_empty());

    let run = Embark::new(emu, &late)
        .config("[eip]\nrequired = false\n")
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert_has(&run.stderr(), "WARN");
    assert_has(&run.stderr(), "continuing without one");
    assert_eq!(emu.addresses(&pool), before, "an address changed");
}

#[test]
fn waits_for_an_address_released_by_another_instance() {
    let emu = emulator();
    let pool = unique("wait");
    let alloc = emu.allocate(json!({"pool": pool}))[0]["allocation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let old = standalone(emu, "eu-west-1a");
    Embark::new(emu, &old)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);

    let new = standalone(emu, "eu-west-1a");
    let waiting = Embark::new(emu, &new)
        .config("[eip]\nwait = \"60s\"\n")
        .spawn(&["eip", "bind", "--pool", &pool]);
    // The old instance lets go (a rolling replacement terminating it) while the new one waits.
    std::thread::sleep(Duration::from_secs(3));
    emu.disassociate(&alloc);
    let run = waiting.wait().expect_code(0);
    assert_eq!(bound_allocation(&run.stdout()), Some(alloc.clone()));
    assert_eq!(holder_of(&emu.addresses(&pool), &new.id), vec![alloc]);
}

#[test]
fn waiting_for_an_address_that_never_frees_fails_at_the_deadline() {
    let emu = emulator();
    let pool = unique("never");
    emu.allocate(json!({"pool": pool}));
    let old = standalone(emu, "eu-west-1a");
    Embark::new(emu, &old)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    let new = standalone(emu, "eu-west-1a");
    let run = Embark::new(emu, &new)
        .config("[eip]\nwait = \"3s\"\n")
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(1);
    assert_has(&run.stderr(), "after waiting");
    let polls = emu
        .requests()
        .iter()
        .filter(|r| {
            r["operation"] == "DescribeAddresses"
                && r["params"]["Filter.1.Value.1"] == pool.as_str()
        })
        .count();
    assert!(
        polls >= 2,
        "the pool was looked at again while waiting ({polls})"
    );
}

/// `instances` run `eip bind --pool` at the same moment; returns (instance id → stdout, exit code).
fn race(
    emu: &Emulator,
    pool: &str,
    instances: &[Instance],
    config: &str,
) -> BTreeMap<String, (String, i32)> {
    let running: Vec<_> = instances
        .iter()
        .map(|inst| {
            (
                inst.id.clone(),
                Embark::new(emu, inst)
                    .config(config)
                    .spawn(&["eip", "bind", "--pool", pool]),
            )
        })
        .collect();
    running
        .into_iter()
        .map(|(id, r)| {
            let run = r.wait();
            (id, (run.stdout() + &run.stderr(), run.code()))
        })
        .collect()
}

fn assert_no_reassociation(emu: &Emulator, allocations: &BTreeSet<String>) {
    let calls: Vec<Value> = emu
        .requests_of("AssociateAddress")
        .into_iter()
        .filter(|r| allocations.contains(r["params"]["AllocationId"].as_str().unwrap_or("")))
        .collect();
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(
            call["params"]["AllowReassociation"], "false",
            "reassociation requested: {call}"
        );
    }
}

#[test]
fn race_32_instances_into_a_pool_of_40_get_32_distinct_addresses() {
    let emu = emulator();
    for round in 0..10 {
        let pool = unique("race40");
        let allocations: BTreeSet<String> = emu
            .allocate(json!({"pool": pool, "count": 40}))
            .iter()
            .map(|a| a["allocation_id"].as_str().unwrap().to_string())
            .collect();
        let instances = emu.launch(json!({"count": 32}));
        let results = race(emu, &pool, &instances, "");
        let addresses = emu.addresses(&pool);
        let mut taken = BTreeSet::new();
        for inst in &instances {
            let (out, code) = &results[&inst.id];
            assert_eq!(*code, 0, "round {round}: {out}");
            let alloc = bound_allocation(out).unwrap_or_else(|| panic!("round {round}: {out}"));
            assert!(
                taken.insert(alloc.clone()),
                "round {round}: {alloc} handed out twice"
            );
            // Confirmed on its own instance, and the only address it holds.
            assert_eq!(
                holder_of(&addresses, &inst.id),
                vec![alloc],
                "round {round}"
            );
        }
        assert_eq!(taken.len(), 32);
        assert_eq!(
            addresses
                .iter()
                .filter(|a| a["instance_id"].is_null())
                .count(),
            8
        );
        assert_no_reassociation(emu, &allocations);
    }
}

#[test]
fn race_32_instances_into_a_pool_of_16_bind_exactly_16_and_steal_none() {
    let emu = emulator();
    for round in 0..10 {
        let pool = unique("race16");
        let allocations: BTreeSet<String> = emu
            .allocate(json!({"pool": pool, "count": 16}))
            .iter()
            .map(|a| a["allocation_id"].as_str().unwrap().to_string())
            .collect();
        let instances = emu.launch(json!({"count": 32}));
        let results = race(emu, &pool, &instances, "[eip]\nrequired = false\n");
        let addresses = emu.addresses(&pool);
        let (mut bound, mut none) = (BTreeSet::new(), 0);
        for inst in &instances {
            let (out, code) = &results[&inst.id];
            assert_eq!(*code, 0, "round {round}: {out}");
            match bound_allocation(out) {
                Some(alloc) => {
                    assert!(bound.insert(alloc.clone()), "round {round}: {alloc} twice");
                    assert_eq!(
                        holder_of(&addresses, &inst.id),
                        vec![alloc],
                        "round {round}"
                    );
                }
                None => {
                    assert!(out.contains("no free address"), "round {round}: {out}");
                    assert!(holder_of(&addresses, &inst.id).is_empty(), "round {round}");
                    none += 1;
                }
            }
        }
        assert_eq!((bound.len(), none), (16, 16), "round {round}");
        assert_eq!(
            bound, allocations,
            "round {round}: every address bound once"
        );
        assert_no_reassociation(emu, &allocations);
    }
}

#[test]
fn plan_shows_candidates_and_choice_and_changes_nothing() {
    let emu = emulator();
    let pool = unique("plan");
    emu.allocate(json!({"pool": pool, "count": 2}));
    emu.allocate(json!({"pool": pool, "az": "eu-west-1b"}));
    let inst = standalone(emu, "eu-west-1a");
    let before = emu.addresses(&pool);
    let run = Embark::new(emu, &inst)
        .run(&["eip", "bind", "--pool", &pool, "--plan"])
        .expect_code(0);
    let out = run.stdout();
    assert!(out.contains("3 addresses, 3 free"), "{out}");
    assert_eq!(out.matches("free: candidate").count(), 2, "{out}");
    assert!(out.contains("not for this zone"), "{out}");
    assert!(out.contains("plan: associate"), "{out}");
    assert_eq!(emu.addresses(&pool), before);
    assert!(associate_calls(emu, &inst.id).is_empty());
}

#[test]
fn status_reports_pool_and_reserve() {
    let emu = emulator();
    let pool = unique("status");
    emu.allocate(json!({"pool": pool, "count": 3}));
    let inst = standalone(emu, "eu-west-1a");
    let run = Embark::new(emu, &inst)
        .config("[eip]\nreserve = 3\n")
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert_has(&run.stderr(), "below its reserve of 3");
    let alloc = bound_allocation(&run.stdout()).unwrap();
    let status = Embark::new(emu, &inst)
        .config("[eip]\nreserve = 3\n")
        .run(&["eip", "status", "--pool", &pool, "--json"])
        .expect_code(0)
        .json();
    assert_eq!(status["pool"], pool.as_str());
    assert_eq!(status["total"], 3);
    assert_eq!(status["free"], 2);
    assert_eq!(status["bound_here"]["allocation_id"], alloc.as_str());
    assert_eq!(status["reserve"], 3);
    assert_eq!(status["below_reserve"], true);
    assert_eq!(status["addresses"].as_array().unwrap().len(), 3);
}

#[test]
fn check_reports_the_pool() {
    let emu = emulator();
    let group = unique("eipchk");
    emu.seed(json!({"name": group, "pool_size": 2}));
    let inst = emu.launch_one(json!({"group": group}));
    let run = Embark::new(emu, &inst).run(&["check"]).expect_code(0);
    assert!(
        run.stdout()
            .lines()
            .any(|l| l.starts_with("ok") && l.contains(&format!("pool '{group}': 2 of 2 free"))),
        "{}",
        run.stdout()
    );
}

#[test]
fn unknown_pool_is_a_configuration_error() {
    let emu = emulator();
    let inst = standalone(emu, "eu-west-1a");
    let run = Embark::new(emu, &inst)
        .run(&["eip", "bind", "--pool", "nope"])
        .expect_code(2);
    assert_has(
        &run.stderr(),
        "pool 'nope' has no addresses: tag Elastic IPs with embark:pool=nope",
    );
    // An instance with nothing configured says so explicitly, or its boot line fails.
    let run = Embark::new(emu, &inst)
        .config("[boot]\nrequire = []\n")
        .run(&["check"])
        .expect_code(0);
    assert_has(&run.stdout(), "no pool configured");
}

#[test]
fn no_pool_configured_is_a_usage_error() {
    let emu = emulator();
    let inst = standalone(emu, "eu-west-1a");
    let run = Embark::new(emu, &inst).run(&["eip", "bind"]).expect_code(2);
    assert_has(&run.stderr(), "no Elastic IP pool configured");
}

#[test]
fn malformed_pool_tags_are_configuration_errors() {
    let emu = emulator();
    for (tag, value, needle) in [
        ("embark:eip-pool", " ", "pool name is empty"),
        ("embark:eip-required", "yes", "true or false"),
        ("embark:eip-wait", "a while", "not a duration"),
        ("embark:eip-reserve", "many", "whole number"),
    ] {
        let group = unique("eipbad");
        emu.seed(json!({"name": group, "pool_size": 1, "group_tags": {tag: value}, "lifecycle_hook": false}));
        let inst = emu.launch_one(json!({"group": group}));
        let run = Embark::new(emu, &inst).run(&["eip", "bind"]).expect_code(2);
        assert!(
            run.stderr().contains(tag) && run.stderr().contains(needle),
            "{tag}: {}",
            run.stderr()
        );
        assert!(associate_calls(emu, &inst.id).is_empty());
    }
}

#[test]
fn another_region_is_refused_before_anything_changes() {
    let emu = emulator();
    let pool = unique("region");
    emu.allocate(json!({"pool": pool}));
    let inst = standalone(emu, "eu-west-1a");
    let run = Embark::new(emu, &inst)
        .env("AWS_REGION", "us-east-1")
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(2);
    assert_has(
        &run.stderr(),
        "Elastic IPs can only be bound in the instance's own region",
    );
    assert!(emu
        .addresses(&pool)
        .iter()
        .all(|a| a["instance_id"].is_null()));
}
