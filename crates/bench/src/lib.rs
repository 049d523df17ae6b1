//! Load generator and benchmark drivers.
//!
//! * [`load`]: HTTP/1.1 keep-alive load generation (fixed-rate and closed-loop) with latency
//!   recording.
//! * [`null_engine`]: a zero-latency engine stand-in.
//! * [`stats`]: percentiles and summaries.
//! * [`procs`]: starting the processes under test (engine simulator, router, nginx) on
//!   loopback and learning their ports.
//! * [`router_overhead`]: the router-overhead benchmark (DESIGN §7).
//! * [`routing`]: the routing-quality benchmark (DESIGN §7), built on [`gsp`] (SGLang's
//!   generated-shared-prefix workload), [`stream_load`] (open-loop streaming client),
//!   [`engine_metrics`] (engine counters) and [`chart`] (PNG bar charts).
//! * [`solver_bench`]: the solver and autoscaler benchmark (issue 9), with its inputs in
//!   [`solver_bench_mix`] and its trace simulator in [`solver_bench_trace`].

pub mod chart;
pub mod engine_metrics;
pub mod gsp;
pub mod load;
pub mod null_engine;
pub mod procs;
pub mod router_overhead;
pub mod routing;
pub mod solver_bench;
pub mod solver_bench_mix;
pub mod solver_bench_trace;
pub mod stats;
pub mod stream_load;
