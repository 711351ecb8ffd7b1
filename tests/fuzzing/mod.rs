//! A small mutation fuzzer on the stable toolchain: every committed corpus input of a
//! target is run, then inputs mutated from them (bit flips, random and dictionary bytes,
//! deleted, duplicated and spliced ranges) until a time budget or a case count runs out.
//! A failing input is written to `target/fuzz-failures/` and the test fails naming it and
//! the seed, so that `FUZZ_SEED=<seed>` repeats the run.
//!
//! Knobs: `FUZZ_SECONDS` (per target; each target sets its default), `FUZZ_CASES` (an upper
//! bound on inputs), `FUZZ_SEED`, and `FUZZ_INPUT=<file>` to run one input. Coverage-guided fuzzing (cargo fuzz, nightly) is not needed to
//! run these; the corpus is shared with it where a nightly toolchain exists.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest mutated input.
const MAX_LEN: usize = 64 * 1024;

pub struct Target<'a> {
    pub name: &'a str,
    /// The folder of `fuzz/corpus/` its inputs start from.
    pub corpus: &'a str,
    /// Byte strings worth inserting (keywords, tags, numbers).
    pub dictionary: &'a [&'a [u8]],
    /// A default per-target time budget, when `FUZZ_SECONDS` is not set.
    pub seconds: u64,
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    pub corpus: usize,
    pub runs: u64,
    pub seed: u64,
    pub elapsed: Duration,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

fn load_corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let inputs: Vec<_> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    inputs
}

/// Runs `check` on the corpus and on mutations of it; panics (failing the test) on the
/// first input whose check panics.
pub fn run(target: &Target, check: impl Fn(&[u8])) -> Report {
    // `FUZZ_INPUT=<file>` runs that one input, its panic shown as it is.
    if let Ok(path) = std::env::var("FUZZ_INPUT") {
        check(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")));
        return Report {
            corpus: 0,
            runs: 1,
            seed: 0,
            elapsed: Duration::ZERO,
        };
    }
    let corpus = load_corpus(target.corpus);
    let seconds = env_u64("FUZZ_SECONDS").unwrap_or(target.seconds);
    let max_cases = env_u64("FUZZ_CASES").unwrap_or(u64::MAX);
    let seed = env_u64("FUZZ_SEED").unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("fuzz {}: seed {seed}, {seconds} s", target.name);
    let start = Instant::now();
    let budget = Duration::from_secs(seconds);
    let mut runs = 0u64;
    let try_one = |input: &[u8], runs: &mut u64| {
        *runs += 1;
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            let path = save_failure(target.name, input);
            panic!(
                "fuzz target {}: input {} failed (seed {seed}; FUZZ_SEED={seed} repeats the run)",
                target.name,
                path.display()
            );
        }
    };
    for input in &corpus {
        try_one(input, &mut runs);
    }
    while runs < max_cases && start.elapsed() < budget {
        let input = mutate(&mut rng, &corpus, target.dictionary);
        try_one(&input, &mut runs);
    }
    let report = Report {
        corpus: corpus.len(),
        runs,
        seed,
        elapsed: start.elapsed(),
    };
    eprintln!(
        "fuzz {}: {} inputs ({} from the corpus) in {:.1} s, seed {}",
        target.name,
        report.runs,
        report.corpus,
        report.elapsed.as_secs_f64(),
        report.seed
    );
    report
}

fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{name}-{hash:016x}"));
    let _ = std::fs::write(&path, input);
    path
}

/// One to four mutations of a corpus input (sometimes spliced with another).
pub fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let len = v.len();
        match rng.u8(..9) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                v[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                v[i] = rng.u8(..);
            }
            2 => {
                let i = rng.usize(..=len);
                let n = rng.usize(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                v.splice(i..i, bytes);
            }
            3 if !dict.is_empty() => {
                let i = rng.usize(..=len);
                let word = dict[rng.usize(..dict.len())];
                v.splice(i..i, word.iter().copied());
            }
            4 if len > 0 => {
                let a = rng.usize(..len);
                let b = rng.usize(a..=len.min(a + 64));
                v.drain(a..b);
            }
            5 if len > 0 => {
                // Repeat a range: nesting and floods come from here.
                let a = rng.usize(..len);
                let b = rng.usize(a..=len.min(a + 32));
                let piece = v[a..b].to_vec();
                let times = rng.usize(1..=64);
                for _ in 0..times {
                    v.splice(b..b, piece.iter().copied());
                }
            }
            6 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let cut = rng.usize(..=len);
                let from = rng.usize(..=other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                let i = rng.usize(..len);
                v.truncate(i);
            }
            _ if len > 1 => {
                let i = rng.usize(..len - 1);
                v.swap(i, i + 1);
            }
            _ => {}
        }
        v.truncate(MAX_LEN);
    }
    v
}
