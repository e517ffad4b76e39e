//! The one integration test binary: a real gateway on loopback, real TLS, real Spark.
// Tests may unwrap and panic; the support module is shared by several test modules, so
// "unreachable pub" and per-module dead code are expected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unreachable_pub, dead_code)]

mod cluster;
mod kdc;
mod ldap_dir;
mod support;
mod webdriver;

mod api;
mod batches;
mod clients;
mod jobs;
mod ldap;
mod local_rpc;
mod recovery;
mod rpc;
mod sandbox;
mod security;
mod spark;
mod sparkui;
mod spnego;
mod standalone;
mod standalone_batches;
mod tls;
mod ui;
mod uploads;
mod warm;
