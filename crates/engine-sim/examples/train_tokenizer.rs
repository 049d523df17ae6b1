//! Regenerates `assets/tokenizer.json`, the project's own small byte-level BPE tokenizer.
//!
//! ```text
//! cargo run -p muster-engine-sim --example train_tokenizer -- crates/engine-sim/assets/tokenizer.json
//! ```
//!
//! The training corpus is generated here, deterministically, from a fixed word list (English
//! prose, code and numbers), so the output is reproducible and owes nothing to outside data.

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper};
use tokenizers::{PreTokenizerWrapper, Tokenizer, TokenizerBuilder};

const VOCAB_SIZE: usize = 4096;

const WORDS: &str = "the be to of and a in that have it for not on with he as you do at this but \
his by from they we say her she or an will my one all would there their what so up out if about \
who get which go me when make can like time no just him know take people into year your good some \
could them see other than then now look only come its over think also back after use two how our \
work first well way even new want because any these give day most us is are was were been has had \
did said made found used called may might must shall should very much more many such each every \
model models engine engines token tokens request requests response responses cache cached prefix \
prefill decode batch batches latency throughput router routing gateway server servers cluster node \
nodes pod pods kubernetes volcano queue queues scheduler scheduling gpu gpus memory block blocks \
hash hashes event events metric metrics prompt prompts system user assistant question answer \
answers context window length chunk chunks stream streaming completion completions chat message \
messages content role roles adapter adapters lora weight weights layer layers head heads attention \
transformer inference training data dataset benchmark benchmarks result results report reports \
value values number numbers function functions return returns string strings list lists map maps \
error errors file files line lines code program programs test tests build builds run runs running \
write read open close start stop begin end true false null none yes some all any never always \
please thank thanks hello world help explain describe summarize translate write rewrite compare \
small large fast slow high low long short big little early late old young great important public \
bad same different right left able best better sure free full real whole clear simple hard easy \
because although while where before after during until since between through under above below \
water air fire earth light dark sound voice music art book books story stories city country \
house room school student teacher doctor market money price cost costs business company team \
state government law policy history science research study paper papers idea ideas problem \
problems solution solutions system systems network networks service services user users account \
monday tuesday wednesday thursday friday saturday sunday january february march april june july \
august september october november december morning evening night today tomorrow yesterday week \
fn let mut pub struct enum impl trait use mod crate self super where match loop async await \
def class import from return yield lambda print range len dict int float str bool async \
const var function console log export default interface type package func go defer select \
select from where group order join insert update delete create table index into values \
json yaml http https api url path port host address request header body status ok";

const PUNCT: [&str; 10] = [".", ",", "?", "!", ":", ";", " -", " (", ")", "\""];

/// splitmix64: a tiny deterministic generator, so the corpus never changes between runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn corpus() -> Vec<String> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng(42);
    let mut lines = Vec::new();
    for _ in 0..20_000 {
        let mut line = String::new();
        let n = 4 + rng.below(16);
        for i in 0..n {
            // Zipf-like: low indices (common words) far more often.
            let bound = rng.below(words.len()) + 1;
            let w = words[rng.below(bound)];
            if i > 0 {
                line.push(' ');
            }
            if i == 0 || rng.below(12) == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    line.extend(f.to_uppercase());
                    line.push_str(c.as_str());
                }
            } else {
                line.push_str(w);
            }
            match rng.below(20) {
                0 => line.push_str(PUNCT[rng.below(PUNCT.len())]),
                1 => line.push_str(&format!(" {}", rng.below(10_000))),
                2 => line.push_str(&format!(" {}.{}", rng.below(100), rng.below(100))),
                _ => {}
            }
        }
        line.push_str(PUNCT[rng.below(4)]);
        lines.push(line);
    }
    lines
}

fn main() -> tokenizers::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "crates/engine-sim/assets/tokenizer.json".to_string());
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(VOCAB_SIZE)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build();
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_post_processor(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevel::new(false, true, true).into()))
    .build()?;
    tokenizer.train(&mut trainer, corpus().into_iter())?;
    let tokenizer: Tokenizer = tokenizer.into();
    tokenizer.save(&out, false)?;
    println!(
        "wrote {out}: {} tokens in vocabulary",
        tokenizer.get_vocab_size(true)
    );
    Ok(())
}
