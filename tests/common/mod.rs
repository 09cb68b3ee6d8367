#![allow(dead_code)]

//! The shared integration-test harness: [`app`] starts the sidecar in-process on
//! port-0 listeners, [`config`] builds typed configs, [`metrics`] scrapes /metrics
//! and waits for readiness, [`kafka`] runs a real broker, [`proc`] runs the binary,
//! [`logs`] captures the in-process log.

pub mod app;
pub mod config;
pub mod kafka;
pub mod logs;
pub mod metrics;
pub mod proc;
