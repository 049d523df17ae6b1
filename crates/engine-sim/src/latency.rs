//! The latency model: how long one scheduler step takes, and how long a KV transfer takes.
//!
//! One step runs one forward pass over every scheduled sequence. Sequence `i` brings `n_i` new
//! tokens (a prefill chunk, or 1 for a decode) on top of `c_i` tokens whose KV is already in the
//! cache (prefix-cache hits and earlier chunks cost nothing: they are only read). A roofline:
//!
//! ```text
//! T_mem     = (W + b_kv · Σ (c_i + n_i)) / (BW · e_mem)          weights + KV read once per step
//! T_compute = (2P · Σ n_i + A · Σ n_i · (c_i + (n_i + 1)/2)) / (F · e_cmp)
//! t_step    = o_step + o_seq · S + max(T_mem, T_compute)
//! ```
//!
//! `W` weight bytes, `b_kv` KV bytes per token, `P` parameters, `A = 4 · layers · heads ·
//! head_dim` attention FLOPs per (query, key) pair, `S` scheduled sequences, `BW`/`F` peak
//! bandwidth/FLOPs, `e_*` achieved fractions, `o_*` host overheads. Prefill is compute-bound, so
//! its time grows with *uncached* tokens only; a decode step of `B` sequences holding `K` KV tokens
//! is memory-bound and costs `o_step + W/(BW·e_mem)` (base) `+ o_seq·B` (per sequence)
//! `+ b_kv·K/(BW·e_mem)` (per KV token) until the batch gets large enough to be compute-bound.

use crate::profile::Profile;

/// Work of one sequence within a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqWork {
    /// Tokens computed in this step (prefill chunk length, or 1 for a decode).
    pub new_tokens: usize,
    /// Tokens already in the KV cache before this step (cache hits + earlier chunks/outputs).
    pub context_tokens: usize,
}

/// Precomputed constants of the roofline model.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    weight_bytes: f64,
    kv_bytes_per_token: f64,
    linear_flops_per_token: f64,
    attn_flops_per_pair: f64,
    bandwidth: f64,
    flops: f64,
    step_overhead: f64,
    seq_overhead: f64,
    transfer_bandwidth: f64,
    transfer_latency: f64,
}

impl LatencyModel {
    /// Builds the model from a profile.
    pub fn new(p: &Profile) -> Self {
        let a = &p.model_arch;
        Self {
            weight_bytes: p.weight_bytes(),
            kv_bytes_per_token: p.kv_bytes_per_token(),
            linear_flops_per_token: 2.0 * a.params,
            attn_flops_per_pair: 4.0
                * f64::from(a.num_layers)
                * f64::from(a.num_attention_heads)
                * f64::from(a.head_dim),
            bandwidth: p.gpu.hbm_bandwidth_bytes_per_s * p.efficiency.memory,
            flops: p.gpu.peak_flops * p.efficiency.compute,
            step_overhead: p.overhead.step_s,
            seq_overhead: p.overhead.per_seq_s,
            transfer_bandwidth: p.kv_transfer.bandwidth_bytes_per_s,
            transfer_latency: p.kv_transfer.latency_s,
        }
    }

    /// Duration in seconds of one step over `batch`; zero for an empty batch.
    pub fn step_seconds(&self, batch: &[SeqWork]) -> f64 {
        if batch.is_empty() {
            return 0.0;
        }
        let mut kv_read = 0.0;
        let mut new_tokens = 0.0;
        let mut attn_pairs = 0.0;
        for s in batch {
            let n = s.new_tokens as f64;
            let c = s.context_tokens as f64;
            kv_read += c + n;
            new_tokens += n;
            // Causal attention: the k-th new token attends to c + k keys.
            attn_pairs += n * (c + (n + 1.0) / 2.0);
        }
        let t_mem = (self.weight_bytes + self.kv_bytes_per_token * kv_read) / self.bandwidth;
        let t_compute = (self.linear_flops_per_token * new_tokens
            + self.attn_flops_per_pair * attn_pairs)
            / self.flops;
        self.step_overhead + self.seq_overhead * batch.len() as f64 + t_mem.max(t_compute)
    }

    /// Seconds to move the KV of `tokens` tokens from a prefill to a decode engine:
    /// `latency + tokens · b_kv / link_bandwidth`.
    pub fn transfer_seconds(&self, tokens: usize) -> f64 {
        self.transfer_latency + tokens as f64 * self.kv_bytes_per_token / self.transfer_bandwidth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LatencyModel {
        LatencyModel::new(&Profile::builtin())
    }

    fn prefill(new: usize, ctx: usize) -> f64 {
        model().step_seconds(&[SeqWork {
            new_tokens: new,
            context_tokens: ctx,
        }])
    }

    #[test]
    fn single_sequence_decode_is_memory_bound_around_seven_ms() {
        let t = prefill(1, 100);
        assert!((0.006..0.009).contains(&t), "{t}");
    }

    #[test]
    fn prefill_time_grows_with_uncached_tokens_not_cached_ones() {
        let cold = prefill(4000, 0);
        let warm = prefill(16, 3984);
        assert!(cold > 0.1 && cold < 0.2, "cold 4k prefill {cold}");
        assert!(warm < cold / 10.0, "warm {warm} vs cold {cold}");
    }

    #[test]
    fn decode_step_grows_with_batch_and_kv_in_use() {
        let m = model();
        let batch = |b: usize, ctx: usize| {
            m.step_seconds(&vec![
                SeqWork {
                    new_tokens: 1,
                    context_tokens: ctx
                };
                b
            ])
        };
        assert!(batch(64, 100) > batch(1, 100));
        assert!(batch(64, 4000) > batch(64, 100) * 1.5);
    }

    #[test]
    fn transfer_time_is_latency_plus_bytes_over_bandwidth() {
        let m = model();
        let t = m.transfer_seconds(1000);
        let expected = 0.002 + 1000.0 * 131_072.0 / 40e9;
        assert!((t - expected).abs() < 1e-12);
    }
}
