//! Bad configuration: exit 2 naming the file, the line and the key, before anything is contacted.

mod common;

use common::{assert_has, Embark};

fn rejected(text: &str, needles: &[&str]) {
    let embark = Embark::offline().config(text);
    let path = embark.config_path();
    let run = embark.run(&["identity"]).expect_code(2);
    let err = run.stderr();
    assert!(
        err.contains(&path.display().to_string()),
        "file not named: {err}"
    );
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
}

#[test]
fn unknown_key_names_line_key_and_nearest() {
    rejected(
        "deadline = \"10m\"\n\n[eip]\npool = \"web\"\nreserv = 2\n",
        &["line 5", "`reserv`", "in [eip]", "did you mean `reserve`"],
    );
}

#[test]
fn an_unknown_section_is_called_a_section() {
    rejected(
        "deadline = \"10m\"\n\n[helth]\nurl = \"http://127.0.0.1/\"\n",
        &[
            "line 3",
            "`helth`",
            "unknown section",
            "did you mean `health`",
        ],
    );
}

#[test]
fn wrong_type_names_line_and_key() {
    rejected(
        "[release]\nkeep = \"three\"\n",
        &["line 2", "`keep`", "wrong type"],
    );
}

#[test]
fn malformed_toml_names_line() {
    rejected("[eip]\npool = \"web\n", &["line 2"]);
}

#[test]
fn bad_duration_names_line_and_key() {
    rejected(
        "imds_deadline = \"two minutes\"\n",
        &["line 1", "`imds_deadline`", "not a duration"],
    );
}

#[test]
fn unreadable_config_is_a_usage_error() {
    let embark = Embark::offline();
    let dir = embark.state_dir.path().to_path_buf();
    // A directory where the file should be: cannot be read.
    let run = embark
        .env("EMBARK_CONFIG", &dir)
        .run(&["identity"])
        .expect_code(2);
    assert_has(&run.stderr(), "cannot read the config file");
}

#[test]
fn usage_errors_exit_2() {
    let run = Embark::offline().run(&["no-such-command"]).expect_code(2);
    assert!(run.stderr().contains("no-such-command"));
}
