//! Test harness: the emulator on free loopback ports, simulated instances, and the real binary run
//! with the standard AWS environment variables pointing at them.
//!
//! One emulator serves a whole test file (started on first use, gone when the test process exits);
//! each test seeds its own names so tests can run in parallel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Emulator {
    pub endpoint: String,
    pub imds_base: String,
    pub region: String,
    _child: Child,
    _dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

/// The embark binary under test: the one that ships (`make test` sets EMBARK_TEST_BIN to the static
/// release binary), else the one cargo built for this test run.
pub fn binary() -> PathBuf {
    std::env::var_os("EMBARK_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_embark")))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EMBARK_EMULATOR_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo().join("tests/emulator/.venv/bin/python");
    assert!(
        venv.exists(),
        "the emulator's environment is missing: run `make emulator-env` (creates {})",
        venv.display()
    );
    venv
}

/// The emulator shared by every test of this file.
pub fn emulator() -> &'static Emulator {
    static EMULATOR: OnceLock<Emulator> = OnceLock::new();
    EMULATOR.get_or_init(Emulator::start)
}

impl Emulator {
    /// A private emulator, for tests that disturb everything (IMDS outage).
    pub fn start() -> Emulator {
        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("emulator.log")).expect("log file");
        let child = Command::new(python())
            .args([
                "-m",
                "embark_emulator",
                "--exit-with-parent",
                "--ready-file",
            ])
            .arg(&ready)
            .current_dir(repo().join("tests/emulator"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the emulator");
        let started = Instant::now();
        while !ready.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the emulator did not start within 60 s; see {}",
                dir.path().join("emulator.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // reqwest is built without a bundled crypto provider (as in embark itself).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(&ready).expect("ready file"))
                .expect("ready JSON");
        Emulator {
            endpoint: info["endpoint"].as_str().expect("endpoint").to_string(),
            imds_base: info["imds_base"].as_str().expect("imds").to_string(),
            region: info["region"].as_str().expect("region").to_string(),
            _child: child,
            _dir: dir,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        }
    }

    /// A control API call; panics on a non-2xx answer (a broken test setup).
    pub fn control(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/_embark/{path}", self.endpoint);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .http
            .request(method, &url)
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("control call {url}: {e}"));
        let status = resp.status();
        let text = resp.text().expect("control body");
        assert!(status.is_success(), "control call {url}: {status} {text}");
        serde_json::from_str(&text).expect("control JSON")
    }

    /// A ready-made account (see tests/emulator/embark_emulator/seed.py) under its own names.
    pub fn seed(&self, spec: Value) -> Value {
        self.control("POST", "seed", spec)
    }

    pub fn launch(&self, spec: Value) -> Vec<Instance> {
        let launched = self.control("POST", "launch", spec);
        launched
            .as_array()
            .expect("launch answer")
            .iter()
            .map(|v| Instance {
                id: v["instance_id"].as_str().expect("id").to_string(),
                imds_endpoint: v["imds_endpoint"].as_str().expect("imds").to_string(),
                availability_zone: v["availability_zone"].as_str().expect("az").to_string(),
            })
            .collect()
    }

    pub fn launch_one(&self, spec: Value) -> Instance {
        self.launch(spec).remove(0)
    }

    pub fn instance(&self, id: &str) -> Value {
        self.control("GET", &format!("instances/{id}"), json!({}))
    }

    pub fn fault(&self, spec: Value) {
        self.control("POST", "faults", spec);
    }

    /// Elastic IPs, tagged with `pool` / `az` when given.
    pub fn allocate(&self, spec: Value) -> Vec<Value> {
        match self.control("POST", "addresses", spec) {
            Value::Array(v) => v,
            other => panic!("allocate: {other}"),
        }
    }

    /// The pool's addresses with their associations (`instance_id` null when free).
    pub fn addresses(&self, pool: &str) -> Vec<Value> {
        match self.control("GET", &format!("addresses?pool={pool}"), json!({})) {
            Value::Array(v) => v,
            other => panic!("addresses: {other}"),
        }
    }

    pub fn disassociate(&self, allocation_id: &str) {
        self.control(
            "POST",
            "disassociate",
            json!({"allocation_id": allocation_id}),
        );
    }

    /// Every request the emulator served, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.requests_of("")
    }

    /// The requests of one operation (e.g. `AssociateAddress`), in order.
    pub fn requests_of(&self, operation: &str) -> Vec<Value> {
        match self.control("GET", &format!("requests?operation={operation}"), json!({})) {
            Value::Array(v) => v,
            other => panic!("request log: {other}"),
        }
    }
}

pub struct Instance {
    pub id: String,
    pub imds_endpoint: String,
    pub availability_zone: String,
}

/// An empty config file (every key its default): a named config file must exist.
fn empty_config(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("embark.toml");
    std::fs::write(&path, "").expect("write the empty config");
    path
}

/// A command line for the real binary, as `instance` would run it.
pub struct Embark {
    cmd: Command,
    pub state_dir: tempfile::TempDir,
}

impl Embark {
    pub fn new(emu: &Emulator, instance: &Instance) -> Embark {
        let state_dir = tempfile::tempdir().expect("state dir");
        let mut cmd = Command::new(binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &instance.imds_endpoint)
            .env("AWS_ENDPOINT_URL", &emu.endpoint)
            .env("AWS_ACCESS_KEY_ID", "AKIDEMBARKTEST")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("EMBARK_CONFIG", empty_config(&state_dir))
            .env("EMBARK_STATE_DIR", state_dir.path().join("state"));
        Embark { cmd, state_dir }
    }

    /// Without an instance: config-only commands.
    pub fn offline() -> Embark {
        let state_dir = tempfile::tempdir().expect("state dir");
        let mut cmd = Command::new(binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
            .env("EMBARK_CONFIG", empty_config(&state_dir))
            .env("EMBARK_STATE_DIR", state_dir.path().join("state"));
        Embark { cmd, state_dir }
    }

    /// Writes `text` as the config file and uses it.
    pub fn config(mut self, text: &str) -> Embark {
        let path = self.state_dir.path().join("embark.toml");
        std::fs::write(&path, text).expect("write config");
        self.cmd.env("EMBARK_CONFIG", &path);
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.state_dir.path().join("embark.toml")
    }

    /// Without this variable (e.g. no credentials at all).
    pub fn without(mut self, key: &str) -> Embark {
        self.cmd.env_remove(key);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Embark {
        self.cmd.env(key, value);
        self
    }

    /// Starts it without waiting (races); `wait` collects the result.
    pub fn spawn(mut self, args: &[&str]) -> Running {
        let child = self
            .cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn embark");
        Running {
            child,
            state_dir: self.state_dir,
        }
    }

    /// Another program (a shell script around embark) with the same environment.
    pub fn run_program(self, program: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        for (key, value) in self.cmd.get_envs() {
            if let Some(value) = value {
                cmd.env(key, value);
            }
        }
        let output = cmd.args(args).output().expect("run program");
        Run {
            output,
            _state_dir: self.state_dir,
        }
    }

    pub fn run(mut self, args: &[&str]) -> Run {
        let output = self.cmd.args(args).output().expect("run embark");
        Run {
            output,
            _state_dir: self.state_dir,
        }
    }
}

pub struct Running {
    child: Child,
    state_dir: tempfile::TempDir,
}

impl Running {
    /// SIGTERM (a clean stop).
    /// SIGINT, as Ctrl-C sends.
    pub fn interrupt(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }

    pub fn terminate(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its `EMBARK_STATE_DIR` (the agent's `deploy.json` is there).
    pub fn state(&self) -> PathBuf {
        self.state_dir.path().join("state")
    }

    /// Has it exited (without waiting)?
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL; true when it was still running.
    pub fn kill(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(Some(_)) => false,
            _ => self.child.kill().is_ok(),
        }
    }

    pub fn wait(self) -> Run {
        Run {
            output: self.child.wait_with_output().expect("wait embark"),
            _state_dir: self.state_dir,
        }
    }
}

pub const SECRET: &str = "embarkTestSecretKeyThatMustNeverBeLogged0";

pub struct Run {
    pub output: Output,
    _state_dir: tempfile::TempDir,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout()))
    }
    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// Asserts that `text` contains `needle`, showing all of `text` when it does not.
#[track_caller]
pub fn assert_has(text: &str, needle: &str) {
    assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Polls `check` every 200 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

/// Deterministic bytes that do not compress (a bundle of several ranges, a multipart upload).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// The lines of a text file (none when it does not exist): hook logs, counters.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn file_exists(p: &Path) -> bool {
    p.exists()
}

/// S3 behind embark's back (straight into the emulator's store: no request log, no faults).
impl Emulator {
    pub fn bucket(&self, name: &str) {
        self.control("POST", "buckets", json!({"name": name}));
    }

    /// A bucket in `region`: requests signed for another region are answered 301 PermanentRedirect.
    pub fn bucket_in(&self, name: &str, region: &str) {
        self.control("POST", "buckets", json!({"name": name, "region": region}));
    }

    pub fn s3_put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        let url = format!("{}/_embark/s3/{bucket}/{key}", self.endpoint);
        let resp = self.http.put(&url).body(body).send().expect("s3 put");
        assert!(
            resp.status().is_success(),
            "s3 put {url}: {}",
            resp.status()
        );
    }

    pub fn s3_get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let url = format!("{}/_embark/s3/{bucket}/{key}", self.endpoint);
        let resp = self.http.get(&url).send().expect("s3 get");
        assert!(
            resp.status().is_success(),
            "s3 get {url}: {}",
            resp.status()
        );
        resp.bytes().expect("s3 body").to_vec()
    }

    pub fn s3_keys(&self, bucket: &str) -> Vec<String> {
        match self.control("GET", &format!("s3/{bucket}"), json!({})) {
            Value::Array(v) => v
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            other => panic!("s3 keys: {other}"),
        }
    }

    /// The S3 requests this test's bucket received (the log is shared by parallel tests).
    pub fn s3_requests(&self, bucket: &str, operation: &str) -> Vec<Value> {
        let prefix = format!("/{bucket}/");
        self.requests_of(operation)
            .into_iter()
            .filter(|r| {
                r["service"] == "s3" && r["path"].as_str().is_some_and(|p| p.starts_with(&prefix))
            })
            .collect()
    }

    /// The GETs `bucket` received whose path `matching` accepts.
    pub fn s3_gets(&self, bucket: &str, matching: impl Fn(&str) -> bool) -> Vec<Value> {
        self.s3_requests(bucket, "GetObject")
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(&matching))
            .collect()
    }

    /// A bucket of a test's own (named from `prefix`) and the source `s3://bucket/app` in it.
    pub fn source(&self, prefix: &str) -> Source {
        let bucket = unique(prefix);
        self.bucket(&bucket);
        let url = format!("s3://{bucket}/app");
        Source { bucket, url }
    }

    /// `release push DIR --to SOURCE [-m MESSAGE]` with the real binary; the new release's id.
    pub fn push_dir(&self, dir: &Path, source: &str, message: Option<&str>) -> String {
        let mut args = vec![
            "release",
            "push",
            dir.to_str().expect("utf-8"),
            "--to",
            source,
        ];
        if let Some(message) = message {
            args.extend(["-m", message]);
        }
        let run = self.workstation().run(&args).expect_code(0);
        let out = run.stdout();
        out.split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no release id in: {out}"))
            .to_string()
    }

    /// Push a tree of `files` (path, content) to `source` with the real binary, as CI would.
    pub fn push_files(&self, source: &str, files: &[(&str, &str)]) -> String {
        let tree = tempfile::tempdir().expect("tree");
        for (path, body) in files {
            let p = tree.path().join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(p, body).expect("write");
        }
        self.push_dir(tree.path(), source, None)
    }

    /// `embark` as a developer machine runs it (`release push`, `release list --from`): no instance.
    pub fn workstation(&self) -> Embark {
        Embark::offline()
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "AKIDEMBARKTEST")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", &self.region)
    }
}

/// A group of the test's own without a launching hook (instances start InService), tagged with its
/// release source `s3://<name>-deploy/app`, and its topics.
pub struct Fleet {
    pub name: String,
    pub bucket: String,
    pub source: String,
    pub seed: Value,
}

impl Emulator {
    pub fn fleet(&self, prefix: &str) -> Fleet {
        let name = unique(prefix);
        let source = format!("s3://{name}-deploy/app");
        let seed = self.seed(
            json!({"name": name, "pool_size": 1, "lifecycle_hook": false,
                                    "group_tags": {"embark:release": source}}),
        );
        Fleet {
            bucket: format!("{name}-deploy"),
            name,
            source,
            seed,
        }
    }
}

/// A release source of a test's own.
pub struct Source {
    pub bucket: String,
    pub url: String,
}

/// `release pull` on `inst` into `root`, with extra `[release]` lines.
pub fn pull(emu: &Emulator, inst: &Instance, root: &Path, extra: &str) -> Run {
    Embark::new(emu, inst)
        .config(&format!(
            "[release]\nroot = \"{}\"\n{extra}",
            root.display()
        ))
        .run(&["release", "pull"])
}

/// The release the `current` link under `root` points at.
pub fn current_release(root: &Path) -> Option<String> {
    std::fs::read_link(root.join("current")).ok().map(|t| {
        t.to_string_lossy()
            .trim_start_matches("releases/")
            .to_string()
    })
}

/// The set-up release tests share: a source of the test's own, a tree filled by the test and pushed to
/// it as the first release, an instance of a group whose tags name the source (role `web`), and a
/// release root for it (nothing pulled yet).
pub struct Published {
    pub src: Source,
    pub tree: tempfile::TempDir,
    pub first: String,
    pub inst: Instance,
    pub root: tempfile::TempDir,
}

impl Published {
    pub fn new(emu: &Emulator, fill: impl FnOnce(&Path)) -> Published {
        let src = emu.source("rel");
        let tree = tempfile::tempdir().expect("tree");
        fill(tree.path());
        let first = emu.push_dir(tree.path(), &src.url, Some("v1"));
        let inst =
            emu.launch_one(json!({"tags": {"embark:release": src.url, "embark:role": "web"}}));
        let root = tempfile::tempdir().expect("root");
        Published {
            src,
            tree,
            first,
            inst,
            root,
        }
    }

    /// Push the tree as it is now; the new release's id.
    pub fn push(&self, emu: &Emulator, message: &str) -> String {
        emu.push_dir(self.tree.path(), &self.src.url, Some(message))
    }

    /// `release pull` on the instance into the root, with extra `[release]` lines.
    pub fn pull(&self, emu: &Emulator, extra: &str) -> Run {
        pull(emu, &self.inst, self.root.path(), extra)
    }
}

/// A local HTTP server standing in for the PHP app behind `[health] url`: it answers with the status
/// written in `<root>/current/health.txt` (200 when there is none, or with no root), as the web
/// server would serve the live release. Stops when dropped.
pub struct AppServer {
    pub url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AppServer {
    pub fn new(root: Option<&Path>) -> AppServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!(
            "http://127.0.0.1:{}/health.php",
            listener.local_addr().expect("addr").port()
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let root = root.map(Path::to_path_buf);
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            // Bounded: ends when the server is dropped, and after ten minutes at the most.
            let until = Instant::now() + Duration::from_secs(600);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
                let mut conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let status: u16 = root
                    .as_ref()
                    .and_then(|r| std::fs::read_to_string(r.join("current/health.txt")).ok())
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(200);
                let body = format!("status {status}");
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        AppServer {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
