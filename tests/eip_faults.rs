//! `eip bind` through failing and throttled EC2 calls. Each test has an emulator of its own: throttling
//! is emulator-wide.

mod common;

use common::{assert_has, unique, Embark, Emulator};
use serde_json::json;

fn bound_to(emu: &Emulator, pool: &str, instance: &str) -> usize {
    emu.addresses(pool)
        .iter()
        .filter(|a| a["instance_id"] == instance)
        .count()
}

#[test]
fn associate_failing_twice_with_500_then_succeeding_binds_one_address() {
    let emu = Emulator::start();
    let pool = unique("f500");
    emu.allocate(json!({"pool": pool, "count": 3}));
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.fault(
        json!({"service": "ec2", "operation": "AssociateAddress", "status": 500,
                     "code": "InternalError", "count": 2, "params": {"InstanceId": inst.id}}),
    );
    let run = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert!(run.stdout().starts_with("bound "), "{}", run.stdout());
    assert_eq!(bound_to(&emu, &pool, &inst.id), 1);
    let failed = emu
        .requests()
        .iter()
        .filter(|r| r["operation"] == "AssociateAddress" && r["status"] == 500)
        .count();
    assert_eq!(failed, 2, "both injected failures were met");
}

#[test]
fn association_whose_answer_was_lost_is_recognised_as_ours() {
    // The association goes through but its answer is lost (500); the SDK's retry then meets
    // Resource.AlreadyAssociated on an address that is in fact this instance's: it must not move on
    // and bind a second address.
    let emu = Emulator::start();
    let pool = unique("lost");
    emu.allocate(json!({"pool": pool, "count": 3}));
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.fault(
        json!({"service": "ec2", "operation": "AssociateAddress", "status": 500,
                     "code": "InternalError", "count": 1, "after": true,
                     "params": {"InstanceId": inst.id}}),
    );
    let run = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert!(run.stdout().starts_with("bound "), "{}", run.stdout());
    assert_eq!(bound_to(&emu, &pool, &inst.id), 1, "one address, not two");
    let calls: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r["operation"] == "AssociateAddress")
        .collect();
    assert_eq!(calls.len(), 2, "the lost attempt and the retry: {calls:?}");
    assert_eq!(
        calls[0]["params"]["AllocationId"],
        calls[1]["params"]["AllocationId"]
    );
}

#[test]
fn ec2_throttling_still_binds() {
    let emu = Emulator::start();
    let pool = unique("throttle");
    emu.allocate(json!({"pool": pool, "count": 2}));
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.control("POST", "throttle", json!({"service": "ec2", "rps": 1}));
    let run = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert!(run.stdout().starts_with("bound "), "{}", run.stdout());
    let throttled = emu
        .requests()
        .iter()
        .filter(|r| r["service"] == "ec2" && r["status"] == 503)
        .count();
    assert!(
        throttled > 0,
        "the throttle never bit, so this proves nothing"
    );
    // The control API reads addresses through the emulator's own EC2 endpoint, which the throttle
    // also limits: lift it first, so the check cannot be throttled itself.
    emu.control("DELETE", "faults", json!({}));
    assert_eq!(bound_to(&emu, &pool, &inst.id), 1);
}

#[test]
fn missing_permission_names_the_iam_action() {
    let emu = Emulator::start();
    let pool = unique("deny");
    emu.allocate(json!({"pool": pool, "count": 1}));
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.fault(
        json!({"service": "ec2", "operation": "AssociateAddress", "status": 403,
                     "code": "UnauthorizedOperation",
                     "message": "You are not authorized to perform this operation."}),
    );
    let run = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(1);
    let err = run.stderr();
    assert!(
        err.contains("not allowed to call ec2:AssociateAddress"),
        "{err}"
    );
    assert!(!err.contains("ServiceError {"), "Debug dump: {err}");
    emu.control("DELETE", "faults", json!({}));
    emu.fault(
        json!({"service": "ec2", "operation": "DescribeAddresses", "status": 403,
                     "code": "UnauthorizedOperation", "message": "denied"}),
    );
    let run = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(1);
    assert_has(&run.stderr(), "ec2:DescribeAddresses");
}

// EC2 as AWS documents it (issue 14): eventual consistency and instances with several interfaces.

#[test]
fn a_describe_that_lags_behind_the_association_still_binds_exactly_one_address() {
    // https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html: right after an
    // association, DescribeAddresses may still show the address free. The association's own answer is
    // the win; moving on to a second candidate would silently take the first address away again.
    let emu = Emulator::start();
    let pool = unique("lag");
    emu.allocate(json!({"pool": pool, "count": 3}));
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.control(
        "POST",
        "consistency",
        json!({"describe_addresses_lag_ms": 5000}),
    );
    let run = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert!(run.stdout().starts_with("bound "), "{}", run.stdout());
    let associations = emu
        .requests()
        .iter()
        .filter(|r| r["operation"] == "AssociateAddress")
        .count();
    assert_eq!(associations, 1, "one association, no second candidate");
    emu.control(
        "POST",
        "consistency",
        json!({"describe_addresses_lag_ms": 0}),
    );
    assert_eq!(bound_to(&emu, &pool, &inst.id), 1);
}

#[test]
fn an_instance_with_two_interfaces_binds_through_its_primary_interface() {
    // https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AssociateAddress.html: "If the
    // instance has more than one network interface, you must specify a network interface ID."
    let emu = Emulator::start();
    let pool = unique("eni");
    emu.allocate(json!({"pool": pool, "count": 2}));
    let inst = emu
        .launch(json!({"az": "eu-west-1a", "extra_enis": 1}))
        .into_iter()
        .next()
        .expect("instance");
    let run = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert!(run.stdout().starts_with("bound "), "{}", run.stdout());
    let calls: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r["operation"] == "AssociateAddress")
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let eni = calls[0]["params"]["NetworkInterfaceId"]
        .as_str()
        .unwrap_or_default();
    assert!(eni.starts_with("eni-"), "{}", calls[0]);
    let again = Embark::new(&emu, &inst)
        .run(&["eip", "bind", "--pool", &pool])
        .expect_code(0);
    assert!(
        again.stdout().starts_with("already bound"),
        "{}",
        again.stdout()
    );
}
