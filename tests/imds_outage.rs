//! IMDS refusing connections for the first seconds of a boot (the network is still coming up).
//! A file of its own: the outage takes the whole emulator's IMDS down.

mod common;

use common::{Embark, Emulator};
use serde_json::json;

#[test]
fn identity_survives_imds_unreachable_for_five_seconds() {
    let emu = Emulator::start();
    let inst = emu.launch_one(json!({"az": "eu-west-1a"}));
    emu.control("POST", "imds/unavailable", json!({"seconds": 5}));
    // Prove the outage is real before embark starts.
    let refused = std::net::TcpStream::connect(emu.imds_base.trim_start_matches("http://"));
    assert!(refused.is_err(), "IMDS still accepting connections");
    let run = Embark::new(&emu, &inst)
        .run(&["identity", "--json"])
        .expect_code(0);
    assert_eq!(run.json()["instance_id"], inst.id.as_str());
    // Not two minutes of silence: after the first seconds, each wait says what it waits for.
    let err = run.stderr();
    assert!(
        err.contains("waiting for IMDS at http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains(" left)"), "{err}");
}
