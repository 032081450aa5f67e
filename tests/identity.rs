//! `embark identity` against the emulator's IMDS: what it reports, and how it survives a bad IMDS.

mod common;

use common::{assert_has, emulator, unique, Embark, SECRET};
use serde_json::json;

/// The IMDS requests of one instance.
fn imds_requests(emu: &common::Emulator, instance: &str) -> Vec<serde_json::Value> {
    let prefix = format!("/{instance}/");
    emu.requests()
        .into_iter()
        .filter(|r| r["service"] == "imds" && r["path"].as_str().unwrap_or("").starts_with(&prefix))
        .collect()
}

#[test]
fn group_instance_shows_group_and_propagated_tags_from_imds() {
    let emu = emulator();
    let group = unique("idgrp");
    emu.seed(json!({"name": group, "group_tags": {"Team": "php"}}));
    let inst = emu.launch_one(json!({"group": group, "az": "eu-west-1b"}));
    let run = Embark::new(emu, &inst)
        .run(&["identity", "--json"])
        .expect_code(0);
    let id = run.json();
    let ec2 = emu.instance(&inst.id);
    assert_eq!(id["instance_id"], inst.id.as_str());
    assert_eq!(id["region"], "eu-west-1");
    assert_eq!(id["availability_zone"], "eu-west-1b");
    assert_eq!(id["availability_zone_id"], ec2["availability_zone_id"]);
    assert_eq!(id["private_ipv4"], ec2["private_ipv4"]);
    assert_eq!(id["mac"], ec2["mac"]);
    assert_eq!(id["instance_type"], "t3.micro");
    assert_eq!(id["auto_scaling_group"], group.as_str());
    assert_eq!(id["target_lifecycle_state"], "InService");
    assert_eq!(id["tags"]["embark:eip-pool"], group.as_str());
    assert_eq!(id["tags"]["Team"], "php");
    assert_eq!(id["tags"]["aws:autoscaling:groupName"], group.as_str());
    assert_eq!(id["tags_source"], "imds");
}

#[test]
fn without_metadata_tags_reads_describe_tags() {
    let emu = emulator();
    let group = unique("idtags");
    emu.seed(json!({"name": group}));
    let inst = emu.launch_one(json!({"group": group, "metadata_tags": false}));
    let id = Embark::new(emu, &inst)
        .run(&["identity", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(id["tags_source"], "describe-tags");
    assert_eq!(id["auto_scaling_group"], group.as_str());
    assert_eq!(id["tags"]["embark:role"], group.as_str());
    let described = emu.requests().iter().any(|r| {
        r["operation"] == "DescribeTags"
            && r["params"]["Filter.1.Value.1"].as_str() == Some(inst.id.as_str())
    });
    assert!(described, "no DescribeTags call for {}", inst.id);
}

#[test]
fn instance_outside_a_group_has_no_group_and_succeeds() {
    let emu = emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a", "tags": {"Name": "manual-test"}}));
    let run = Embark::new(emu, &inst).run(&["identity"]).expect_code(0);
    assert_has(&run.stdout(), "not in a group");
    let id = Embark::new(emu, &inst)
        .run(&["identity", "--json"])
        .expect_code(0)
        .json();
    assert!(id["auto_scaling_group"].is_null());
    assert!(id["target_lifecycle_state"].is_null());
    assert_eq!(id["tags"]["Name"], "manual-test");
    assert!(id["public_ipv4"].is_null());
}

#[test]
fn imds_500_three_times_then_200_succeeds() {
    let emu = emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.fault(json!({"service": "imds", "instance": inst.id, "status": 500, "count": 3}));
    let id = Embark::new(emu, &inst)
        .run(&["identity", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(id["instance_id"], inst.id.as_str());
    let failed = imds_requests(emu, &inst.id)
        .iter()
        .filter(|r| r["status"] == 500)
        .count();
    assert_eq!(failed, 3, "the three injected 500s were served and retried");
}

#[test]
fn imds_disabled_is_a_clear_error_without_retrying() {
    let emu = emulator();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.control(
        "POST",
        &format!("instances/{}", inst.id),
        json!({"http_endpoint": "disabled"}),
    );
    let run = Embark::new(emu, &inst).run(&["identity"]).expect_code(1);
    let err = run.stderr();
    assert!(err.contains("IMDS is disabled on this instance"), "{err}");
    assert!(
        !err.contains("Error {") && !err.contains("ErrorResponse"),
        "Debug dump: {err}"
    );
    let calls = imds_requests(emu, &inst.id).len();
    assert_eq!(calls, 1, "a 403 must not be retried");
}

#[test]
fn unreachable_imds_fails_at_the_configured_deadline() {
    let emu = emulator();
    let inst = common::Instance {
        id: "i-00000000000000000".to_string(),
        // Nothing listens on the discard port of loopback.
        imds_endpoint: "http://127.0.0.1:9".to_string(),
        availability_zone: String::new(),
    };
    let run = Embark::new(emu, &inst)
        .config("imds_deadline = \"2s\"\n")
        .run(&["identity"])
        .expect_code(1);
    let err = run.stderr();
    assert!(err.contains("did not answer"), "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

#[test]
fn secrets_never_reach_the_logs() {
    let emu = emulator();
    let group = unique("idlog");
    emu.seed(json!({"name": group}));
    let inst = emu.launch_one(json!({"group": group, "metadata_tags": false}));
    for format in ["human", "json"] {
        let run = Embark::new(emu, &inst)
            .run(&["-vv", "--log-format", format, "identity"])
            .expect_code(0);
        let err = run.stderr();
        assert!(!err.is_empty(), "-vv logs something");
        assert!(!err.contains(SECRET), "secret key in logs: {err}");
        assert!(
            !err.to_ascii_lowercase()
                .contains("x-aws-ec2-metadata-token:"),
            "IMDS token header in logs"
        );
        if format == "json" {
            for line in err.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            }
        }
    }
}
