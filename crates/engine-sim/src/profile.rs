//! Engine profiles: the model, GPU and scheduler parameters behind the latency model.
//!
//! A profile is a YAML file; `profiles/` in this crate ships calibrated ones and the README
//! explains where each number comes from. Derived quantities (KV bytes per token, number of KV
//! blocks) are computed here so every consumer agrees on them.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The profile compiled into the binary, used when `--profile` is not given.
pub const DEFAULT_PROFILE_YAML: &str = include_str!("../profiles/llama-3-8b-h100-80gb.yaml");

/// Every profile compiled into the binary, by name (`--profile NAME`).
pub const BUILTIN_PROFILES: [(&str, &str); 2] = [
    ("llama-3-8b-h100-80gb", DEFAULT_PROFILE_YAML),
    (
        "deepseek-r1-distill-qwen-7b-h100-80gb",
        include_str!("../profiles/deepseek-r1-distill-qwen-7b-h100-80gb.yaml"),
    ),
];

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read profile {path}: {source}")]
    Io {
        /// Path that failed.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema.
    #[error("invalid profile YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A field has a value the simulator cannot work with.
    #[error("invalid profile: field `{field}` {problem}")]
    Invalid {
        /// Dotted field path.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// A complete engine profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short profile id, e.g. `llama-3-8b-h100-80gb`.
    pub name: String,
    /// Default served model name.
    pub model: String,
    /// Longest prompt + output, in tokens.
    pub max_model_len: usize,
    /// Transformer shape.
    pub model_arch: ModelArch,
    /// Accelerator.
    pub gpu: Gpu,
    /// Memory split between weights, activations and KV cache.
    pub memory: Memory,
    /// Tokens per KV block (vLLM `--block-size`).
    pub block_size: usize,
    /// Continuous-batching limits.
    pub scheduler: SchedulerLimits,
    /// Achieved fraction of peak bandwidth and compute.
    pub efficiency: Efficiency,
    /// Fixed per-step and per-sequence host overheads.
    pub overhead: Overhead,
    /// Prefill→decode KV transfer link (NIXL / Mooncake).
    pub kv_transfer: KvTransfer,
    /// Output length when the request sets neither `max_tokens` nor `ignore_eos`.
    pub natural_output_tokens: usize,
}

/// Transformer dimensions that set FLOPs and KV size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelArch {
    /// Parameter count.
    pub params: f64,
    /// Decoder layers.
    pub num_layers: u32,
    /// Query heads.
    pub num_attention_heads: u32,
    /// KV heads (GQA).
    pub num_kv_heads: u32,
    /// Per-head dimension.
    pub head_dim: u32,
    /// Bytes per weight and per KV element (2 for bf16/fp16).
    pub dtype_bytes: u32,
}

/// Accelerator capabilities.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// Marketing name, for reports.
    pub name: String,
    /// Device memory in bytes.
    pub memory_bytes: f64,
    /// Peak HBM bandwidth in bytes/s.
    pub hbm_bandwidth_bytes_per_s: f64,
    /// Peak dense bf16 FLOP/s.
    pub peak_flops: f64,
}

/// How device memory is split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// vLLM `--gpu-memory-utilization`.
    pub gpu_memory_utilization: f64,
    /// Activations, CUDA graphs and allocator slack not available to the KV cache.
    pub activation_reserve_bytes: f64,
    /// Overrides the derived number of KV blocks when set.
    #[serde(default)]
    pub num_gpu_blocks: Option<usize>,
}

/// Continuous-batching limits (vLLM flags of the same names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerLimits {
    /// Most sequences in one batch.
    pub max_num_seqs: usize,
    /// Most tokens (prefill chunks + decodes) in one step.
    pub max_num_batched_tokens: usize,
    /// Most distinct LoRA adapters in one batch.
    pub max_loras: usize,
}

/// Achieved fraction of peak.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Efficiency {
    /// Fraction of peak HBM bandwidth reached by memory-bound steps.
    pub memory: f64,
    /// Fraction of peak FLOP/s reached by compute-bound steps (MFU).
    pub compute: f64,
}

/// Host-side costs not explained by the roofline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Overhead {
    /// Scheduling, kernel launch and sampling setup per step, seconds.
    pub step_s: f64,
    /// Sampling/detokenization per scheduled sequence, seconds.
    pub per_seq_s: f64,
}

/// KV transfer link between a prefill and a decode engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvTransfer {
    /// Effective bandwidth in bytes/s.
    pub bandwidth_bytes_per_s: f64,
    /// Fixed handshake latency, seconds.
    pub latency_s: f64,
}

impl Profile {
    /// The built-in default profile.
    pub fn builtin() -> Self {
        Self::from_yaml(DEFAULT_PROFILE_YAML).expect("built-in profile is valid")
    }

    /// A built-in profile by name, `None` for a name not in [`BUILTIN_PROFILES`].
    pub fn named(name: &str) -> Option<Self> {
        BUILTIN_PROFILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, yaml)| Self::from_yaml(yaml).expect("built-in profile is valid"))
    }

    /// A built-in profile's name, or else a path to a profile YAML.
    pub fn named_or_load(name_or_path: &str) -> Result<Self, ProfileError> {
        match Self::named(name_or_path) {
            Some(p) => Ok(p),
            None => Self::load(Path::new(name_or_path)),
        }
    }

    /// Parses and validates a profile.
    pub fn from_yaml(text: &str) -> Result<Self, ProfileError> {
        let p: Profile = serde_yaml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Reads, parses and validates a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    fn validate(&self) -> Result<(), ProfileError> {
        fn positive(field: &'static str, v: f64) -> Result<(), ProfileError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ProfileError::Invalid {
                    field,
                    problem: format!("must be a positive number, got {v}"),
                })
            }
        }
        fn fraction(field: &'static str, v: f64) -> Result<(), ProfileError> {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(ProfileError::Invalid {
                    field,
                    problem: format!("must be in (0, 1], got {v}"),
                })
            }
        }
        positive("block_size", self.block_size as f64)?;
        positive("max_model_len", self.max_model_len as f64)?;
        positive("model_arch.params", self.model_arch.params)?;
        positive(
            "gpu.hbm_bandwidth_bytes_per_s",
            self.gpu.hbm_bandwidth_bytes_per_s,
        )?;
        positive("gpu.peak_flops", self.gpu.peak_flops)?;
        positive(
            "kv_transfer.bandwidth_bytes_per_s",
            self.kv_transfer.bandwidth_bytes_per_s,
        )?;
        positive("scheduler.max_num_seqs", self.scheduler.max_num_seqs as f64)?;
        positive(
            "scheduler.max_num_batched_tokens",
            self.scheduler.max_num_batched_tokens as f64,
        )?;
        fraction("efficiency.memory", self.efficiency.memory)?;
        fraction("efficiency.compute", self.efficiency.compute)?;
        fraction(
            "memory.gpu_memory_utilization",
            self.memory.gpu_memory_utilization,
        )?;
        if self.num_gpu_blocks() == 0 {
            return Err(ProfileError::Invalid {
                field: "memory",
                problem: "leaves no memory for the KV cache (weights + reserve exceed the budget)"
                    .into(),
            });
        }
        Ok(())
    }

    /// KV cache bytes per token: `2 (K and V) × layers × kv_heads × head_dim × dtype_bytes`.
    pub fn kv_bytes_per_token(&self) -> f64 {
        let a = &self.model_arch;
        2.0 * f64::from(a.num_layers)
            * f64::from(a.num_kv_heads)
            * f64::from(a.head_dim)
            * f64::from(a.dtype_bytes)
    }

    /// Weight bytes read by every forward pass: `params × dtype_bytes`.
    pub fn weight_bytes(&self) -> f64 {
        self.model_arch.params * f64::from(self.model_arch.dtype_bytes)
    }

    /// KV blocks on the device: the explicit override, else
    /// `⌊(memory × utilization − weights − reserve) / (kv_bytes_per_token × block_size)⌋`.
    pub fn num_gpu_blocks(&self) -> usize {
        if let Some(n) = self.memory.num_gpu_blocks {
            return n;
        }
        let budget = self.gpu.memory_bytes * self.memory.gpu_memory_utilization
            - self.weight_bytes()
            - self.memory.activation_reserve_bytes;
        let per_block = self.kv_bytes_per_token() * self.block_size as f64;
        if budget <= 0.0 || per_block <= 0.0 {
            0
        } else {
            (budget / per_block).floor() as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profile_derives_llama3_8b_numbers() {
        let p = Profile::builtin();
        // 2 × 32 layers × 8 KV heads × 128 × 2 bytes = 128 KiB per token.
        assert_eq!(p.kv_bytes_per_token(), 131_072.0);
        let blocks = p.num_gpu_blocks();
        // Roughly 430k tokens of KV on an 80 GB card after 16 GB of weights.
        assert!((25_000..30_000).contains(&blocks), "{blocks}");
    }

    #[test]
    fn builtin_profiles_load_by_name_and_match_their_names() {
        for (name, _) in BUILTIN_PROFILES {
            let p = Profile::named(name).expect(name);
            assert_eq!(p.name, name);
        }
        // Kthena's benchmark model: 2 × 28 layers × 4 KV heads × 128 × 2 bytes = 56 KiB per
        // token, in blocks of 128 tokens; about 1M tokens of KV on an 80 GB card.
        let q = Profile::named("deepseek-r1-distill-qwen-7b-h100-80gb").unwrap();
        assert_eq!(q.kv_bytes_per_token(), 57_344.0);
        assert_eq!(q.block_size, 128);
        let tokens = q.num_gpu_blocks() * q.block_size;
        assert!((950_000..1_050_000).contains(&tokens), "{tokens}");
        assert!(Profile::named("no-such-profile").is_none());
        let err = Profile::named_or_load("no-such-profile")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-profile"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let text = DEFAULT_PROFILE_YAML.replace("block_size: 16", "block_size: 0");
        let err = Profile::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("block_size"), "{err}");
        let err = Profile::from_yaml("name: x\nbogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus") || err.contains("missing"), "{err}");
    }
}
