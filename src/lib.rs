//! embark: turns a freshly launched EC2 instance into a healthy member of its Auto Scaling fleet.
//!
//! The layers, each using only those below it:
//! - `cli` parses the command line and dispatches (only `main` uses it);
//! - `boot`, `check`: orchestration (the boot's diagram, the preflight);
//! - the steps, one module each, none importing another: `eip`, `efs`, `release`, `health`;
//! - `context` (configuration, clients, the identified instance) over `identity` (IMDSv2);
//! - shared pieces, once each: `aws` (SDK setup, the AWS error adapter), `retry` (within a deadline),
//!   `fsutil` (atomic writes, hashing), `net` (pure-Rust DNS), `config`, `status`, `notify`, `output`,
//!   `s3url` (S3 URLs), `keys` (trusted public keys), `rollout` (a deploy's waves).

pub mod aws;
pub mod boot;
pub mod check;
pub mod cli;
pub mod command;
pub mod config;
pub mod context;
pub mod drain;
pub mod efs;
pub mod eip;
pub mod error;
pub mod fsutil;
pub mod health;
pub mod hooks;
pub mod iam;
pub mod identity;
pub mod keys;
pub mod lifecycle;
pub mod logs;
pub mod net;
pub mod notify;
pub mod output;
pub mod release;
pub mod retry;
pub mod rollout;
pub mod s3url;
pub mod status;
pub mod targets;
#[cfg(test)]
mod testing;
