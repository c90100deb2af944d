//! stoma-native: the storage behind Stoma's `rateLimit`, `cache` and
//! `circuitBreaker` policies, implemented in Rust and exposed to Node.js,
//! Bun and Deno through napi-rs.
//!
//! The crate is laid out as one module per backend over a few shared pieces:
//!
//! - [`circuit`]  — circuit states and operations, and their codes.
//! - [`clock`]    — wall-clock milliseconds, the unit every store speaks.
//! - [`envelope`] — the cache envelope Stoma's Redis and PostgreSQL adapters write.
//! - [`errors`]   — how failures (including panics) become JS exceptions.
//! - [`fastcall`] — raw N-API functions for the per-request calls.
//! - [`ffi`]      — C-ABI symbols for the per-request calls in Bun and Deno.
//! - [`memory`]   — in-process stores, called synchronously from JS.
//! - [`postgres`] — PostgreSQL stores on Stoma's tables, over tokio-postgres.
//! - [`redis`]    — stores in Redis, sharing data with Stoma's JS `redisAdapter`.
//! - [`testing`]  — hidden hooks that panic on purpose, for the boundary tests.
//! - [`tls`]      — rustls settings for both network stores.
//!
//! The JavaScript layer (`lib/*.js`) wraps the classes exported here into the
//! exact shapes Stoma's policies expect (Promise-returning stores, real
//! `Response` objects) and builds the `GatewayAdapter` bundles.

pub mod circuit;
pub mod clock;
pub mod envelope;
pub mod errors;
pub mod fastcall;
pub mod ffi;
pub mod memory;
pub mod postgres;
pub mod redis;
pub mod sliding_window;
pub mod testing;
pub mod tls;
