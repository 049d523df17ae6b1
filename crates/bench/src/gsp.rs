//! A seeded generator for SGLang `bench_serving`'s `generated-shared-prefix` workload.
//!
//! `groups × prompts_per_group` requests; every request of a group starts with the group's
//! system prompt (the exact same text), followed by `"\n\n"` and a question of its own, and asks
//! for exactly `output_len` tokens (`ignore_eos` + `max_tokens`). The request list is shuffled,
//! as SGLang does, and arrivals follow a Poisson process (see [`poisson_arrivals`]).
//!
//! SGLang samples token ids uniformly and decodes them; decoding and re-encoding does not
//! round-trip under BPE, so here the text is built from *words that are one token each*: the
//! vocabulary entries that are a space plus ASCII letters. The tokenizer's byte-level
//! pre-tokenizer splits text at every such word, so a run of `n` of them encodes to exactly `n`
//! tokens, and the lengths hit their targets exactly ([`Vocabulary::count`] checks this with the
//! engine's own tokenizer).

use muster_engine_sim::tokenize::TextCodec;
use serde::Serialize;

/// Shape of a generated-shared-prefix workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GspShape {
    /// Distinct system prompts.
    pub groups: usize,
    /// Requests per system prompt.
    pub prompts_per_group: usize,
    /// Tokens in each system prompt.
    pub system_len: usize,
    /// Tokens in each question.
    pub question_len: usize,
    /// Output tokens per request (`ignore_eos` + `max_tokens`).
    pub output_len: usize,
}

impl GspShape {
    /// Requests in the workload.
    pub fn requests(&self) -> usize {
        self.groups * self.prompts_per_group
    }
}

/// One request of the workload.
#[derive(Debug, Clone)]
pub struct GspRequest {
    /// Group (system prompt) index.
    pub group: usize,
    /// `system + "\n\n" + question`.
    pub prompt: String,
    /// Output tokens to ask for.
    pub max_tokens: usize,
}

/// The words prompts are made of: each encodes to exactly one token on its own and after
/// any other word.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    words: Vec<String>,
}

impl Vocabulary {
    /// Collects the one-token `" letters"` words of `codec`'s vocabulary.
    pub fn from_codec(codec: &TextCodec) -> anyhow::Result<Vocabulary> {
        let mut words = Vec::new();
        for id in 0..codec.vocab_size() as u32 {
            let Ok(text) = codec.decode(&[id]) else {
                continue;
            };
            let Some(rest) = text.strip_prefix(' ') else {
                continue;
            };
            if rest.len() < 2 || !rest.bytes().all(|b| b.is_ascii_lowercase()) {
                continue;
            }
            if codec.encode(&text).map(|ids| ids.len()).ok() == Some(1) {
                words.push(text);
            }
        }
        anyhow::ensure!(
            words.len() >= 64,
            "the tokenizer has only {} one-token words; cannot build prompts",
            words.len()
        );
        words.sort();
        Ok(Vocabulary { words })
    }

    /// Words available.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether there are none (never, once built).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// `tokens` random words, concatenated.
    pub fn text(&self, rng: &mut fastrand::Rng, tokens: usize) -> String {
        let mut s = String::with_capacity(tokens * 7);
        for _ in 0..tokens {
            s.push_str(&self.words[rng.usize(..self.words.len())]);
        }
        s
    }

    /// Tokens `codec` makes of `text` (to check the generator against the engine's tokenizer).
    pub fn count(codec: &TextCodec, text: &str) -> anyhow::Result<usize> {
        Ok(codec.encode(text)?.len())
    }
}

/// Separator between system prompt and question, as in SGLang.
pub const SEPARATOR: &str = "\n\n";

/// Generates the workload: system prompts, questions, SGLang's seeded shuffle.
pub fn generate(vocab: &Vocabulary, shape: &GspShape, seed: u64) -> Vec<GspRequest> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let systems: Vec<String> = (0..shape.groups)
        .map(|_| vocab.text(&mut rng, shape.system_len))
        .collect();
    let mut requests = Vec::with_capacity(shape.requests());
    for (group, system) in systems.iter().enumerate() {
        for _ in 0..shape.prompts_per_group {
            let question = vocab.text(&mut rng, shape.question_len);
            requests.push(GspRequest {
                group,
                prompt: format!("{system}{SEPARATOR}{question}"),
                max_tokens: shape.output_len,
            });
        }
    }
    rng.shuffle(&mut requests);
    requests
}

/// Arrival offsets (seconds from the start) of a Poisson process with `rate` per second:
/// exponential gaps, the first request at 0. An infinite rate sends everything at once.
pub fn poisson_arrivals(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut t = 0.0;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 && rate.is_finite() {
            // Inverse CDF of Exp(rate); 1 - u is in (0, 1].
            t += -(1.0 - rng.f64()).ln() / rate;
        }
        out.push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> GspShape {
        GspShape {
            groups: 4,
            prompts_per_group: 3,
            system_len: 300,
            question_len: 40,
            output_len: 8,
        }
    }

    #[test]
    fn prompts_hit_their_token_counts_with_the_engine_tokenizer() {
        let codec = TextCodec::builtin().unwrap();
        let vocab = Vocabulary::from_codec(&codec).unwrap();
        let reqs = generate(&vocab, &shape(), 7);
        assert_eq!(reqs.len(), 12);
        let sep = Vocabulary::count(&codec, SEPARATOR).unwrap();
        for r in &reqs {
            let n = Vocabulary::count(&codec, &r.prompt).unwrap();
            assert_eq!(n, 300 + sep + 40, "group {}", r.group);
        }
    }

    #[test]
    fn a_group_shares_its_exact_system_prompt_and_only_that() {
        let codec = TextCodec::builtin().unwrap();
        let vocab = Vocabulary::from_codec(&codec).unwrap();
        let reqs = generate(&vocab, &shape(), 7);
        let system = |r: &GspRequest| r.prompt.split(SEPARATOR).next().unwrap().to_string();
        for a in &reqs {
            for b in &reqs {
                assert_eq!(a.group == b.group, system(a) == system(b));
            }
        }
        // Token-level: the shared prefix is the whole system prompt.
        let g0: Vec<_> = reqs.iter().filter(|r| r.group == 0).collect();
        let t0 = codec.encode(&g0[0].prompt).unwrap();
        let t1 = codec.encode(&g0[1].prompt).unwrap();
        let common = t0.iter().zip(&t1).take_while(|(a, b)| a == b).count();
        assert!(common >= 300, "shared tokens {common}");
        // Groups are interleaved by the shuffle.
        assert!(reqs.windows(2).any(|w| w[0].group != w[1].group));
    }

    #[test]
    fn the_seed_decides_everything() {
        let codec = TextCodec::builtin().unwrap();
        let vocab = Vocabulary::from_codec(&codec).unwrap();
        let a = generate(&vocab, &shape(), 1);
        let b = generate(&vocab, &shape(), 1);
        let c = generate(&vocab, &shape(), 2);
        let key = |v: &[GspRequest]| v.iter().map(|r| r.prompt.clone()).collect::<Vec<_>>();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert_eq!(poisson_arrivals(5, 10.0, 3), poisson_arrivals(5, 10.0, 3));
    }

    #[test]
    fn poisson_gaps_have_the_asked_mean() {
        let t = poisson_arrivals(20_000, 50.0, 11);
        assert_eq!(t[0], 0.0);
        assert!(t.windows(2).all(|w| w[1] >= w[0]));
        let mean_gap = t.last().unwrap() / (t.len() - 1) as f64;
        assert!((mean_gap - 0.02).abs() < 0.001, "mean gap {mean_gap}");
        assert!(poisson_arrivals(3, f64::INFINITY, 0)
            .iter()
            .all(|&x| x == 0.0));
    }
}
