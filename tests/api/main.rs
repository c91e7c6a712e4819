//! Black-box tests: the real server on a random port with a fresh database,
//! a real local receiver, and assertions on what the receiver got, on status
//! codes and on the delivery log. Each test runs on every backend.

mod helpers;
mod process;

mod admin;
mod cli;
mod connections;
mod delivery;
mod events;
mod fairness;
mod health;
mod lifecycle;
mod logs;
mod metrics;
mod nodes;
mod openapi;
mod recovery;
mod retries;
mod security;
mod store;
mod webhooks;
