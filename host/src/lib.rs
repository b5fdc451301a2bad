//! AgentStead: a self-hosted control plane for AI agents.
//!
//! The binary is `agentstead`; this library contains everything it is made of,
//! so integration tests can build the same application in process.

pub mod agents;
pub mod api;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod fsutil;
pub mod hostkey;
pub mod ids;
pub mod plugins;
pub mod schedules;
pub mod secrets;
pub mod store;
