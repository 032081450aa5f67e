//! embark: turns a freshly launched EC2 instance into a healthy member of its Auto Scaling fleet.
//!
//! `cli` parses and dispatches; each concern has its own module.

pub mod aws;
pub mod boot;
pub mod check;
pub mod cli;
pub mod config;
pub mod efs;
pub mod eip;
pub mod error;
pub mod health;
pub mod iam;
pub mod identity;
pub mod net;
pub mod notify;
pub mod release;
pub mod report;
pub mod status;
