//! The shim as a library: the Task service and everything under it, so the
//! binary, benchmarks and tests share one implementation.

pub mod annotations;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod container;
pub mod drain;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod hooks;
pub mod host_cgroup;
pub mod io;
pub mod metrics;
pub mod network;
pub mod oci_resources;
pub mod persist;
pub mod pod_stats;
pub mod podsize;
pub mod portforward;
pub mod process;
pub mod sandbox;
pub mod seccomp;
pub mod service;
pub mod share;
pub mod spec;
pub mod stats;
pub mod testing;
pub mod vmsize;
