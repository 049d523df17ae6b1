//! The engine core: continuous batching over a paged, prefix-cached KV store, in virtual time.
//!
//! This module does no I/O and reads no clock: the caller passes `now` (virtual seconds) in.
//! One iteration is [`EngineCore::schedule`] (pick the batch and its duration) followed, once
//! that duration has elapsed, by [`EngineCore::complete`] (apply the step: tokens come out,
//! blocks become cached, finished requests free their blocks). The policy follows vLLM V1:
//!
//! * running requests first, in arrival order, each taking 1 token (decode) or a chunk of its
//!   remaining prefill from the `max_num_batched_tokens` budget;
//! * when a running request needs a block and none is free, the most recently admitted running
//!   request is preempted (recompute mode: blocks freed, request back to the waiting front);
//! * then waiting requests are admitted FCFS while `max_num_seqs`, the token budget, the LoRA
//!   slot limit and free KV blocks allow; a request that does not fit in KV stays waiting;
//! * on admission, the longest cached prefix of full blocks is reused (at least one token is
//!   always computed so there are logits to sample from);
//! * requests whose KV comes from a remote prefill engine hold their blocks while the transfer
//!   time runs, without using the step.

use std::collections::{HashMap, VecDeque};

use crate::block_hash::{block_hash, root_hash, HashContext};
use crate::kv_cache::{BlockId, BlockPool, KvEvent};
use crate::latency::{LatencyModel, SeqWork};
use crate::profile::Profile;

/// Engine-assigned request id.
pub type RequestId = u64;

/// Why a request stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Reached its natural end (the simulated EOS).
    Stop,
    /// Hit `max_tokens` or the model's context length.
    Length,
    /// Cancelled by the client.
    Abort,
}

impl FinishReason {
    /// The OpenAI / vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// A request as the engine core sees it.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Tokens to generate before stopping.
    pub max_output_tokens: usize,
    /// Reported finish reason when `max_output_tokens` is reached.
    pub finish_reason_at_limit: FinishReason,
    /// LoRA adapter name and engine-local id.
    pub lora: Option<(String, u32)>,
    /// Per-request cache salt.
    pub cache_salt: Option<String>,
    /// The prompt's KV arrives from a remote prefill engine; it costs a transfer, not compute.
    pub remote_prefill: bool,
    /// Seed that picks the filler output tokens.
    pub output_seed: u64,
}

/// One token produced for a request, or its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission {
    /// Request.
    pub id: RequestId,
    /// The new token, if one was sampled.
    pub token: Option<u32>,
    /// Seconds since arrival when this is the first token.
    pub ttft: Option<f64>,
    /// Seconds since the previous token otherwise.
    pub itl: Option<f64>,
    /// Set on the request's last emission.
    pub finished: Option<Finished>,
}

/// Final accounting of a finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Why it stopped.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens served from the local prefix cache.
    pub cached_tokens: usize,
    /// Arrival to finish, seconds.
    pub e2e: f64,
    /// Arrival to first scheduling, seconds.
    pub queue_time: f64,
    /// Ids of the blocks that held the prompt (for NIXL `remote_block_ids`).
    pub prompt_block_ids: Vec<BlockId>,
}

/// Cumulative counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, tokens found cached.
    pub prefix_hits: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub generation_tokens: u64,
}

/// Point-in-time view for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreSnapshot {
    /// Requests in the running batch.
    pub running: usize,
    /// Requests waiting for admission (including those waiting for remote KV).
    pub waiting: usize,
    /// KV usage 0–1.
    pub kv_usage: f64,
    /// Total KV blocks.
    pub num_blocks: usize,
    /// Free blocks.
    pub free_blocks: usize,
    /// Blocks holding a cached hash.
    pub cached_blocks: usize,
    /// LoRA adapters of running requests.
    pub running_loras: Vec<String>,
    /// LoRA adapters of waiting requests.
    pub waiting_loras: Vec<String>,
    /// Counters.
    pub counters: CoreCounters,
}

/// A planned step: which requests compute how many tokens, and how long it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `(request, new tokens)` in batch order.
    pub work: Vec<(RequestId, usize)>,
    /// Virtual seconds the step takes.
    pub duration: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    /// KV being pulled from a prefill engine until the given virtual time.
    Transferring,
}

#[derive(Debug, Clone)]
struct Req {
    tokens: Vec<u32>,
    prompt_len: usize,
    max_output: usize,
    limit_reason: FinishReason,
    lora: Option<(String, u32)>,
    root: u64,
    /// Hashes of the full blocks of `tokens` computed so far (grows as blocks fill).
    hashes: Vec<u64>,
    blocks: Vec<BlockId>,
    /// Blocks of `blocks` already committed to the cache.
    committed: usize,
    num_computed: usize,
    phase: Phase,
    remote_prefill: bool,
    transfer_done_at: f64,
    output_seed: u64,
    arrival: f64,
    first_scheduled: Option<f64>,
    last_token_at: Option<f64>,
    cached_tokens: usize,
    prompt_block_ids: Vec<BlockId>,
}

impl Req {
    fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Hashes of every full block of the current token sequence.
    fn full_block_hashes(&mut self, block_size: usize) -> &[u64] {
        let full = self.tokens.len() / block_size;
        while self.hashes.len() < full {
            let i = self.hashes.len();
            let parent = if i == 0 {
                self.root
            } else {
                self.hashes[i - 1]
            };
            self.hashes.push(block_hash(
                parent,
                &self.tokens[i * block_size..(i + 1) * block_size],
            ));
        }
        &self.hashes[..full]
    }
}

/// The engine core.
#[derive(Debug, Clone)]
pub struct EngineCore {
    model: String,
    block_size: usize,
    max_model_len: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    max_loras: usize,
    latency: LatencyModel,
    pool: BlockPool,
    reqs: HashMap<RequestId, Req>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    transferring: Vec<RequestId>,
    next_id: RequestId,
    counters: CoreCounters,
    filler: Vec<u32>,
}

/// Why the core refused a request outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// Prompt plus requested output exceeds the context window.
    #[error(
        "This model's maximum context length is {max_model_len} tokens. However, you requested \
         {requested} tokens ({prompt} in the messages, {output} in the completion). Please \
         reduce the length of the messages or completion."
    )]
    TooLong {
        /// Context window.
        max_model_len: usize,
        /// Prompt + output.
        requested: usize,
        /// Prompt tokens.
        prompt: usize,
        /// Output tokens.
        output: usize,
    },
    /// Prompt plus output need more KV blocks than the cache has: it could never finish.
    #[error(
        "the request needs {needed} KV blocks for its prompt and output but the engine has \
         only {capacity}"
    )]
    ExceedsKvCapacity {
        /// Blocks needed.
        needed: usize,
        /// Blocks in the cache.
        capacity: usize,
    },
    /// Empty prompt.
    #[error("the prompt is empty")]
    EmptyPrompt,
}

impl EngineCore {
    /// A core for `profile` with `num_blocks` KV blocks, serving `model`, emitting output tokens
    /// drawn from `filler`.
    pub fn new(profile: &Profile, model: &str, num_blocks: usize, filler: Vec<u32>) -> Self {
        assert!(!filler.is_empty(), "filler vocabulary must not be empty");
        Self {
            model: model.to_string(),
            block_size: profile.block_size,
            max_model_len: profile.max_model_len,
            max_num_seqs: profile.scheduler.max_num_seqs,
            max_num_batched_tokens: profile.scheduler.max_num_batched_tokens,
            max_loras: profile.scheduler.max_loras.max(1),
            latency: LatencyModel::new(profile),
            pool: BlockPool::new(num_blocks),
            reqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            transferring: Vec::new(),
            next_id: 1,
            counters: CoreCounters::default(),
            filler,
        }
    }

    /// The latency model in use.
    pub fn latency(&self) -> &LatencyModel {
        &self.latency
    }

    /// Tokens per KV block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Context window in tokens.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Queues a request arriving at `now`.
    pub fn add_request(&mut self, r: NewRequest, now: f64) -> Result<RequestId, AdmitError> {
        if r.prompt.is_empty() {
            return Err(AdmitError::EmptyPrompt);
        }
        let requested = r.prompt.len() + r.max_output_tokens;
        if requested > self.max_model_len {
            return Err(AdmitError::TooLong {
                max_model_len: self.max_model_len,
                requested,
                prompt: r.prompt.len(),
                output: r.max_output_tokens,
            });
        }
        // Prompt and output must fit the cache together, or the request could preempt itself
        // forever once it outgrows the free blocks.
        let needed = requested.div_ceil(self.block_size);
        if needed > self.pool.capacity() {
            return Err(AdmitError::ExceedsKvCapacity {
                needed,
                capacity: self.pool.capacity(),
            });
        }
        let root = root_hash(&HashContext {
            model: &self.model,
            lora: r.lora.as_ref().map(|(n, _)| n.as_str()),
            cache_salt: r.cache_salt.as_deref(),
        });
        let id = self.next_id;
        self.next_id += 1;
        let prompt_len = r.prompt.len();
        self.reqs.insert(
            id,
            Req {
                tokens: r.prompt,
                prompt_len,
                max_output: r.max_output_tokens.max(1),
                limit_reason: r.finish_reason_at_limit,
                lora: r.lora,
                root,
                hashes: Vec::new(),
                blocks: Vec::new(),
                committed: 0,
                num_computed: 0,
                phase: Phase::Waiting,
                remote_prefill: r.remote_prefill,
                transfer_done_at: 0.0,
                output_seed: r.output_seed,
                arrival: now,
                first_scheduled: None,
                last_token_at: None,
                cached_tokens: 0,
                prompt_block_ids: Vec::new(),
            },
        );
        self.waiting.push_back(id);
        Ok(id)
    }

    /// Drops a request (client went away), freeing its blocks.
    pub fn abort(&mut self, id: RequestId) {
        if let Some(r) = self.reqs.remove(&id) {
            self.pool.release(&r.blocks);
            self.waiting.retain(|x| *x != id);
            self.running.retain(|x| *x != id);
            self.transferring.retain(|x| *x != id);
        }
    }

    /// Whether any request is queued, running or transferring.
    pub fn has_work(&self) -> bool {
        !self.reqs.is_empty()
    }

    /// Earliest virtual time at which a pending KV transfer completes.
    pub fn next_transfer_done(&self) -> Option<f64> {
        self.transferring
            .iter()
            .map(|id| self.reqs[id].transfer_done_at)
            .min_by(f64::total_cmp)
    }

    /// Drops the prefix cache if nothing is running. Returns whether it did.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.pool.reset_prefix_cache()
    }

    /// Takes the KV events produced since the last call.
    pub fn drain_kv_events(&mut self) -> Vec<KvEvent> {
        self.pool.drain_events()
    }

    /// Counters and gauges for metrics.
    pub fn snapshot(&self) -> CoreSnapshot {
        let loras = |ids: &mut dyn Iterator<Item = &RequestId>| {
            let mut v: Vec<String> = ids
                .filter_map(|id| self.reqs[id].lora.as_ref().map(|(n, _)| n.clone()))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        CoreSnapshot {
            running: self.running.len(),
            waiting: self.waiting.len() + self.transferring.len(),
            kv_usage: self.pool.usage(),
            num_blocks: self.pool.capacity(),
            free_blocks: self.pool.num_free(),
            cached_blocks: self.pool.num_cached(),
            running_loras: loras(&mut self.running.iter()),
            waiting_loras: loras(&mut self.waiting.iter().chain(self.transferring.iter())),
            counters: self.counters,
        }
    }

    /// Plans the next step at virtual time `now`; `None` when there is nothing to compute
    /// (idle, or only KV transfers in flight).
    pub fn schedule(&mut self, now: f64) -> Option<Step> {
        self.finish_transfers(now);
        let bs = self.block_size;
        let mut budget = self.max_num_batched_tokens;
        let mut work: Vec<(RequestId, usize)> = Vec::new();
        let mut preempted = false;

        // 1. Running requests keep their place; make room by preempting from the back.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let r = &self.reqs[&id];
            let need = (r.tokens.len() - r.num_computed).min(budget);
            let blocks_needed = (r.num_computed + need)
                .div_ceil(bs)
                .saturating_sub(r.blocks.len());
            let mut fits = true;
            while self.pool.num_free() < blocks_needed {
                let victim = *self.running.last().expect("running is not empty");
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            let r = self.reqs.get_mut(&id).expect("running request exists");
            for _ in 0..blocks_needed {
                r.blocks
                    .push(self.pool.allocate().expect("checked free blocks"));
            }
            work.push((id, need));
            budget -= need;
            i += 1;
        }

        // 2. Admit waiting requests (not in a step that had to preempt: memory is tight).
        let mut skipped: Vec<RequestId> = Vec::new();
        // A step that had to preempt skips admission (memory is tight), unless preemption
        // emptied the batch: then the queue head must be let in or the engine would stall.
        while (!preempted || work.is_empty())
            && budget > 0
            && self.running.len() < self.max_num_seqs
        {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            if !self.lora_slot_available(id) {
                skipped.push(id);
                continue;
            }
            match self.try_admit(id, budget, now) {
                Admission::Scheduled(n) => {
                    work.push((id, n));
                    budget -= n;
                }
                Admission::Transferring => {}
                Admission::NoKv => {
                    self.waiting.push_front(id);
                    break;
                }
            }
        }
        for id in skipped.into_iter().rev() {
            self.waiting.push_front(id);
        }

        if work.is_empty() {
            return None;
        }
        let shape: Vec<SeqWork> = work
            .iter()
            .map(|(id, n)| SeqWork {
                new_tokens: *n,
                context_tokens: self.reqs[id].num_computed,
            })
            .collect();
        Some(Step {
            duration: self.latency.step_seconds(&shape),
            work,
        })
    }

    /// Applies a planned step that ended at virtual time `now`.
    pub fn complete(&mut self, step: &Step, now: f64) -> Vec<Emission> {
        let bs = self.block_size;
        let mut out = Vec::new();
        for &(id, n) in &step.work {
            // A request preempted or aborted after planning has nothing to apply.
            let Some(r) = self.reqs.get_mut(&id) else {
                continue;
            };
            if r.phase != Phase::Running {
                continue;
            }
            r.num_computed += n;
            Self::commit_computed_blocks(&mut self.pool, r, bs);
            if r.num_computed < r.tokens.len() {
                continue; // a prefill chunk, more to come
            }
            // All known tokens are computed: sample the next one.
            let pos = r.output_len() as u64;
            let tok = self.filler
                [((r.output_seed.wrapping_add(pos)) % self.filler.len() as u64) as usize];
            r.tokens.push(tok);
            self.counters.generation_tokens += 1;
            let (ttft, itl) = match r.last_token_at {
                None => (Some(now - r.arrival), None),
                Some(t) => (None, Some(now - t)),
            };
            r.last_token_at = Some(now);
            if r.prompt_block_ids.is_empty() {
                r.prompt_block_ids =
                    r.blocks[..r.prompt_len.div_ceil(bs).min(r.blocks.len())].to_vec();
            }
            let finished = if r.output_len() >= r.max_output {
                Some(r.limit_reason)
            } else if r.tokens.len() >= self.max_model_len {
                Some(FinishReason::Length)
            } else {
                None
            }
            .map(|reason| Finished {
                reason,
                prompt_tokens: r.prompt_len,
                completion_tokens: r.output_len(),
                cached_tokens: r.cached_tokens,
                e2e: now - r.arrival,
                queue_time: r.first_scheduled.unwrap_or(now) - r.arrival,
                prompt_block_ids: r.prompt_block_ids.clone(),
            });
            if finished.is_some() {
                let r = self.reqs.remove(&id).expect("request exists");
                self.pool.release(&r.blocks);
                self.running.retain(|x| *x != id);
            }
            out.push(Emission {
                id,
                token: Some(tok),
                ttft,
                itl,
                finished,
            });
        }
        out
    }

    fn lora_slot_available(&self, id: RequestId) -> bool {
        let Some((name, _)) = &self.reqs[&id].lora else {
            return true;
        };
        let mut active: Vec<&str> = self
            .running
            .iter()
            .filter_map(|r| self.reqs[r].lora.as_ref().map(|(n, _)| n.as_str()))
            .collect();
        active.sort_unstable();
        active.dedup();
        active.contains(&name.as_str()) || active.len() < self.max_loras
    }

    fn try_admit(&mut self, id: RequestId, budget: usize, now: f64) -> Admission {
        let bs = self.block_size;
        let r = self.reqs.get_mut(&id).expect("waiting request exists");
        let total = r.tokens.len();
        // A request whose remote KV already arrived has its blocks; only the last token is left.
        let kv_loaded = !r.blocks.is_empty();
        let (hit_blocks, hashes) = if kv_loaded {
            (0, Vec::new())
        } else {
            let hashes = r.full_block_hashes(bs).to_vec();
            // Keep at least one token to compute: its logits produce the next token.
            let max_hit = (total - 1) / bs;
            let hit = self
                .pool
                .longest_cached_prefix(&hashes[..max_hit.min(hashes.len())]);
            (hit, hashes)
        };
        let r = self.reqs.get_mut(&id).expect("waiting request exists");
        let computed = if kv_loaded {
            r.num_computed
        } else {
            hit_blocks * bs
        };
        if r.remote_prefill && !kv_loaded {
            // Remote prefill: the whole prompt's blocks are reserved now, filled by the transfer.
            let blocks_total = total.div_ceil(bs);
            let fresh = blocks_total - hit_blocks;
            let free_after_hits =
                self.pool.num_free() - self.pool.free_among_cached(&hashes[..hit_blocks]);
            if free_after_hits < fresh {
                return Admission::NoKv;
            }
            self.count_prefix(total, hit_blocks * bs);
            let r = self.reqs.get_mut(&id).expect("waiting request exists");
            for h in &hashes[..hit_blocks] {
                r.blocks
                    .push(self.pool.take_cached(*h).expect("hit is cached"));
            }
            for _ in 0..fresh {
                r.blocks
                    .push(self.pool.allocate().expect("checked free blocks"));
            }
            r.cached_tokens = hit_blocks * bs;
            r.committed = hit_blocks;
            let transferred = (total - 1).saturating_sub(hit_blocks * bs);
            r.transfer_done_at = now + self.latency.transfer_seconds(transferred);
            r.first_scheduled = Some(now);
            r.phase = Phase::Transferring;
            self.transferring.push(id);
            return Admission::Transferring;
        }
        let need = (total - computed).min(budget);
        let blocks_total = (computed + need).div_ceil(bs);
        let fresh = blocks_total.saturating_sub(if kv_loaded {
            r.blocks.len()
        } else {
            hit_blocks
        });
        let free_after_hits =
            self.pool.num_free() - self.pool.free_among_cached(&hashes[..hit_blocks]);
        if free_after_hits < fresh {
            return Admission::NoKv;
        }
        if !kv_loaded {
            self.count_prefix(total, hit_blocks * bs);
        }
        let r = self.reqs.get_mut(&id).expect("waiting request exists");
        for h in &hashes[..hit_blocks] {
            r.blocks
                .push(self.pool.take_cached(*h).expect("hit is cached"));
        }
        for _ in 0..fresh {
            r.blocks
                .push(self.pool.allocate().expect("checked free blocks"));
        }
        if !kv_loaded {
            r.num_computed = computed;
            r.committed = hit_blocks;
            if r.first_scheduled.is_none() {
                r.cached_tokens = computed;
            }
        }
        r.first_scheduled.get_or_insert(now);
        r.phase = Phase::Running;
        self.running.push(id);
        Admission::Scheduled(need)
    }

    fn count_prefix(&mut self, queried: usize, hit: usize) {
        self.counters.prefix_queries += queried as u64;
        self.counters.prefix_hits += hit as u64;
        self.counters.prompt_tokens += queried as u64;
    }

    fn finish_transfers(&mut self, now: f64) {
        let bs = self.block_size;
        let mut done: Vec<RequestId> = self
            .transferring
            .iter()
            .copied()
            .filter(|id| self.reqs[id].transfer_done_at <= now)
            .collect();
        if done.is_empty() {
            return;
        }
        self.transferring.retain(|id| !done.contains(id));
        // Oldest first at the head of the queue: they already hold their KV.
        done.sort_by(|a, b| self.reqs[a].arrival.total_cmp(&self.reqs[b].arrival));
        for id in done.into_iter().rev() {
            let r = self.reqs.get_mut(&id).expect("transferring request exists");
            r.num_computed = r.tokens.len() - 1;
            r.phase = Phase::Waiting;
            Self::commit_computed_blocks(&mut self.pool, r, bs);
            self.waiting.push_front(id);
        }
    }

    fn preempt(&mut self, id: RequestId) {
        let r = self.reqs.get_mut(&id).expect("running request exists");
        self.pool.release(&r.blocks);
        r.blocks.clear();
        r.committed = 0;
        r.num_computed = 0;
        r.phase = Phase::Waiting;
        // A preempted remote-prefill request recomputes locally.
        r.remote_prefill = false;
        self.running.retain(|x| *x != id);
        self.waiting.push_front(id);
        self.counters.preemptions += 1;
    }

    fn commit_computed_blocks(pool: &mut BlockPool, r: &mut Req, bs: usize) {
        let full = r.num_computed / bs;
        if full <= r.committed {
            return;
        }
        let hashes = r.full_block_hashes(bs).to_vec();
        let from = r.committed;
        let parent = if from == 0 {
            None
        } else {
            Some(hashes[from - 1])
        };
        pool.commit_full_blocks(
            &r.blocks[from..full],
            &hashes[from..full],
            parent,
            &r.tokens[from * bs..full * bs],
            bs,
            r.lora.as_ref().map(|(_, id)| *id),
        );
        r.committed = full;
    }
}

enum Admission {
    Scheduled(usize),
    Transferring,
    NoKv,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(blocks: usize) -> Profile {
        let mut p = Profile::builtin();
        p.memory.num_gpu_blocks = Some(blocks);
        p
    }

    fn req(prompt: Vec<u32>, out: usize) -> NewRequest {
        NewRequest {
            prompt,
            max_output_tokens: out,
            finish_reason_at_limit: FinishReason::Length,
            lora: None,
            cache_salt: None,
            remote_prefill: false,
            output_seed: 0,
        }
    }

    /// Runs the core until idle; returns (virtual end time, all emissions).
    fn run(core: &mut EngineCore, mut now: f64) -> (f64, Vec<Emission>) {
        let mut all = Vec::new();
        for _ in 0..100_000 {
            match core.schedule(now) {
                Some(step) => {
                    now += step.duration;
                    all.extend(core.complete(&step, now));
                }
                None => match core.next_transfer_done() {
                    Some(t) => now = t,
                    None => return (now, all),
                },
            }
        }
        panic!("engine did not drain");
    }

    fn ttft(em: &[Emission], id: RequestId) -> f64 {
        em.iter().find(|e| e.id == id).unwrap().ttft.unwrap()
    }

    #[test]
    fn repeated_prefix_hits_cache_and_is_faster() {
        let p = profile(10_000);
        let mut core = EngineCore::new(&p, "m", 10_000, vec![5, 6]);
        let prompt: Vec<u32> = (0..4000).collect();
        let a = core.add_request(req(prompt.clone(), 4), 0.0).unwrap();
        let (t, em1) = run(&mut core, 0.0);
        let b = core.add_request(req(prompt, 4), t).unwrap();
        let (_, em2) = run(&mut core, t);
        let (cold, warm) = (ttft(&em1, a), ttft(&em2, b));
        assert!(warm < cold / 5.0, "warm {warm} cold {cold}");
        let c = core.snapshot().counters;
        assert_eq!(c.prefix_queries, 8000);
        // All full blocks but the one holding the last prompt token.
        assert_eq!(c.prefix_hits, 3984);
        let fin = em2.iter().find_map(|e| e.finished.clone()).unwrap();
        assert_eq!(fin.cached_tokens, 3984);
        assert_eq!(fin.completion_tokens, 4);
    }

    #[test]
    fn chunked_prefill_splits_long_prompts_across_steps() {
        let mut p = profile(10_000);
        p.scheduler.max_num_batched_tokens = 512;
        let mut core = EngineCore::new(&p, "m", 10_000, vec![1]);
        core.add_request(req((0..2000).collect(), 1), 0.0).unwrap();
        let s1 = core.schedule(0.0).unwrap();
        assert_eq!(s1.work[0].1, 512);
        assert!(
            core.complete(&s1, s1.duration).is_empty(),
            "no token mid-prefill"
        );
        let (_, em) = run(&mut core, s1.duration);
        assert_eq!(em.len(), 1);
    }

    #[test]
    fn max_num_seqs_caps_the_batch_and_the_rest_wait() {
        let mut p = profile(10_000);
        p.scheduler.max_num_seqs = 2;
        let mut core = EngineCore::new(&p, "m", 10_000, vec![1]);
        for i in 0..5u32 {
            core.add_request(req(vec![i; 20], 3), 0.0).unwrap();
        }
        let s = core.schedule(0.0).unwrap();
        assert_eq!(s.work.len(), 2);
        let snap = core.snapshot();
        assert_eq!((snap.running, snap.waiting), (2, 3));
        let (_, em) = run(&mut core, s.duration);
        assert_eq!(em.iter().filter(|e| e.finished.is_some()).count(), 5);
    }

    #[test]
    fn kv_capacity_bound_evicts_and_turns_hits_into_misses() {
        // Prompt a (30 blocks), then an unrelated prompt b (30 blocks), then a again.
        let replay = |blocks: usize| {
            let p = profile(blocks);
            let mut core = EngineCore::new(&p, "m", blocks, vec![1]);
            let a: Vec<u32> = (0..480).collect();
            let b: Vec<u32> = (10_000..10_480).collect();
            let mut t = 0.0;
            for prompt in [a.clone(), b] {
                core.add_request(req(prompt, 1), t).unwrap();
                t = run(&mut core, t).0;
            }
            let before = core.snapshot().counters.prefix_hits;
            let evictions = core
                .drain_kv_events()
                .into_iter()
                .filter(|e| matches!(e, KvEvent::BlockRemoved { .. }))
                .count();
            core.add_request(req(a, 1), t).unwrap();
            run(&mut core, t);
            (core.snapshot().counters.prefix_hits - before, evictions)
        };
        // Room for both: a hits on all 29 blocks it may reuse (the last token is recomputed).
        assert_eq!(replay(100), (29 * 16, 0));
        // 40 blocks: b takes the 10 empty blocks and evicts 20 of a's (tail first), so only
        // a's first 10 blocks still hit.
        let (hits, evictions) = replay(40);
        assert_eq!(hits, 10 * 16);
        assert!(evictions > 0, "eviction is reported as BlockRemoved");
    }

    #[test]
    fn full_kv_keeps_requests_waiting_then_admits_them() {
        let p = profile(20);
        let mut core = EngineCore::new(&p, "m", 20, vec![1]);
        // Each needs 10 blocks for 150 prompt tokens + output.
        for i in 0..3u32 {
            core.add_request(req(vec![i; 150], 8), 0.0).unwrap();
        }
        let s = core.schedule(0.0).unwrap();
        assert!(s.work.len() < 3, "KV is full: someone waits");
        assert!(core.snapshot().waiting >= 1);
        let (_, em) = run(&mut core, s.duration);
        assert_eq!(em.iter().filter(|e| e.finished.is_some()).count(), 3);
        assert_eq!(core.snapshot().kv_usage, 0.0);
    }

    #[test]
    fn oversized_requests_are_refused_not_stuck() {
        let p = profile(4);
        let mut core = EngineCore::new(&p, "m", 4, vec![1]);
        assert!(matches!(
            core.add_request(req(vec![1; 100], 1), 0.0),
            Err(AdmitError::ExceedsKvCapacity { .. })
        ));
        assert!(matches!(
            core.add_request(req(vec![1; 40], 40), 0.0),
            Err(AdmitError::ExceedsKvCapacity { .. })
        ));
        assert!(matches!(
            core.add_request(req(vec![1; 10], 10_000), 0.0),
            Err(AdmitError::TooLong { .. })
        ));
    }

    #[test]
    fn remote_prefill_charges_transfer_instead_of_compute() {
        let p = profile(10_000);
        let mut core = EngineCore::new(&p, "m", 10_000, vec![1]);
        let mut r = req((0..4000).collect(), 2);
        r.remote_prefill = true;
        let id = core.add_request(r, 0.0).unwrap();
        assert!(
            core.schedule(0.0).is_none(),
            "transfer uses no compute step"
        );
        let done = core.next_transfer_done().unwrap();
        assert!((done - core.latency().transfer_seconds(3999)).abs() < 1e-9);
        let (_, em) = run(&mut core, 0.0);
        let t = ttft(&em, id);
        let cold_prefill = core.latency().step_seconds(&[SeqWork {
            new_tokens: 4000,
            context_tokens: 0,
        }]);
        assert!(t < cold_prefill, "ttft {t} vs local prefill {cold_prefill}");
        // The transferred prompt is now in the decode engine's prefix cache.
        assert!(core
            .drain_kv_events()
            .iter()
            .any(|e| matches!(e, KvEvent::BlockStored { .. })));
    }

    #[test]
    fn lora_slots_limit_distinct_adapters_per_batch() {
        let mut p = profile(10_000);
        p.scheduler.max_loras = 1;
        let mut core = EngineCore::new(&p, "m", 10_000, vec![1]);
        for (i, name) in ["a", "b", "a"].iter().enumerate() {
            let mut r = req(vec![i as u32; 20], 2);
            r.lora = Some((name.to_string(), i as u32));
            core.add_request(r, 0.0).unwrap();
        }
        let s = core.schedule(0.0).unwrap();
        assert_eq!(s.work.len(), 2, "both 'a' requests run, 'b' waits");
        assert_eq!(core.snapshot().waiting_loras, vec!["b".to_string()]);
        let (_, em) = run(&mut core, s.duration);
        assert_eq!(em.iter().filter(|e| e.finished.is_some()).count(), 3);
    }

    #[test]
    fn preemption_under_memory_pressure_still_finishes_everything() {
        let mut p = profile(12);
        p.max_model_len = 4096;
        let mut core = EngineCore::new(&p, "m", 12, vec![1]);
        // Two requests that fit at admission but grow past the cache together.
        core.add_request(req(vec![1; 40], 60), 0.0).unwrap();
        core.add_request(req(vec![2; 40], 60), 0.0).unwrap();
        let (_, em) = run(&mut core, 0.0);
        assert_eq!(em.iter().filter(|e| e.finished.is_some()).count(), 2);
        assert!(core.snapshot().counters.preemptions > 0);
    }
}
