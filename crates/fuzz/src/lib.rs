//! Fuzzing that runs in the ordinary test command (no nightly toolchain, no `cargo fuzz`): each
//! target has a seed corpus in `tests/fuzz/TARGET/` (one input per file), which is replayed as
//! is and then mutated — bit flips, byte insertions and deletions, truncation, duplicated and
//! spliced chunks, and tokens from the target's dictionary — with a fixed seed, so every run
//! checks the same inputs and a failure reproduces.
//!
//! `MANIFOLD_FUZZ_ITERATIONS` (mutated inputs per target; default per target) and
//! `MANIFOLD_FUZZ_SEED` run it longer or elsewhere. A failing input is written to
//! `$TMPDIR/manifold-fuzz-failures/TARGET-N` and named in the panic, ready to be added to the
//! corpus once fixed.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

use rand::{Rng, SeedableRng, rngs::StdRng};

/// One fuzz target: its corpus directory name, its dictionary, and how many mutated inputs a
/// default run checks.
pub struct Target {
    pub name: &'static str,
    pub dictionary: &'static [&'static [u8]],
    pub iterations: usize,
}

/// The seed inputs of `target` (sorted by file name, so runs are reproducible).
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repo().join("tests/fuzz").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} is missing: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read a corpus file");
            (p, bytes)
        })
        .collect()
}

/// Run `check` on every seed of `target`, then on its mutations. `check` panics on a defect;
/// the panic is reported with the input that caused it (saved to a file).
pub fn run(target: &Target, mut check: impl FnMut(&[u8])) {
    let seeds = corpus(target.name);
    let iterations = std::env::var("MANIFOLD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(target.iterations);
    let seed = std::env::var("MANIFOLD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6d61_6e69_666f_6c64_u64);
    let mut rng = StdRng::seed_from_u64(seed ^ hash(target.name));
    let mut try_one = |n: usize, input: &[u8]| {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(input))) {
            let saved = save(target.name, n, input);
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "fuzz target {} failed on input {n} (seed {seed}), saved to {}: {why}\ninput: {:?}",
                target.name,
                saved.display(),
                String::from_utf8_lossy(input)
            );
        }
    };
    for (n, (_, bytes)) in seeds.iter().enumerate() {
        try_one(n, bytes);
    }
    for n in 0..iterations {
        let base = &seeds[rng.random_range(0..seeds.len())].1;
        let other = &seeds[rng.random_range(0..seeds.len())].1;
        let input = mutate(&mut rng, base, other, target.dictionary);
        try_one(seeds.len() + n, &input);
    }
}

/// One to four mutations of `base`.
fn mutate(rng: &mut StdRng, base: &[u8], other: &[u8], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..=len)
        };
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 => v.insert(at, rng.random()),
            2 if len > 0 => {
                let end = (at + rng.random_range(1..=8)).min(len);
                v.drain(at.min(len)..end);
            }
            3 => v.truncate(at),
            4 if len > 0 => {
                let start = rng.random_range(0..len);
                let end = (start + rng.random_range(1..=32)).min(len);
                let chunk = v[start..end].to_vec();
                v.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let start = rng.random_range(0..other.len());
                let end = (start + rng.random_range(1..=64)).min(other.len());
                v.splice(at..at, other[start..end].iter().copied());
            }
            6 if !dictionary.is_empty() => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                v.splice(at..at, token.iter().copied());
            }
            _ => {
                // A byte that parsers treat specially.
                let special = [
                    b'"', b'\\', b'{', b'}', b'[', b']', b'\n', b'\r', 0, 0xff, b':',
                ];
                v.insert(at, special[rng.random_range(0..special.len())]);
            }
        }
    }
    v
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn save(target: &str, n: usize, input: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join("manifold-fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{target}-{n}"));
    let _ = std::fs::write(&p, input);
    p
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_is_deterministic_and_changes_the_input() {
        let run = || {
            let mut rng = StdRng::seed_from_u64(7);
            (0..50)
                .map(|_| mutate(&mut rng, b"{\"a\":1}", b"xyz", &[b"null"]))
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert!(a.iter().any(|m| m != b"{\"a\":1}"));
    }

    #[test]
    fn a_failing_input_is_reported_with_its_file() {
        let t = Target {
            name: "jsonrpc",
            dictionary: &[],
            iterations: 0,
        };
        let r = catch_unwind(AssertUnwindSafe(|| run(&t, |_| panic!("boom"))));
        let msg = r.expect_err("the failure propagates");
        let msg = msg.downcast_ref::<String>().expect("a message");
        assert!(
            msg.contains("fuzz target jsonrpc failed") && msg.contains("boom"),
            "{msg}"
        );
    }
}
