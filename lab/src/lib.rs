//! The lab: a real t-of-n cluster inside one process on 127.0.0.1 ([`cluster`]), the demo that
//! shows it sign, survive lost nodes and fail closed ([`demo`]), and the benchmarks that time
//! signing ([`bench`]) and resharing ([`bench_reshare`]) over QUIC next to the same work done
//! in process. The `conclave` binary's `demo` and `bench` commands are thin wiring around
//! these; they print their own reports (human or JSON).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod bench;
pub mod bench_clients;
pub mod bench_parts;
pub mod bench_reshare;
pub mod bench_rss;
pub mod bench_scale;
pub mod cluster;
pub mod demo;
