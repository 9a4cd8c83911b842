//! `leakbloom bench filter`: the engine against the `bloomfilter` crate on the same keys.
//!
//! Both engines get the same random keys and the same target fpr, run on one thread, and
//! print one line each on stdout:
//!
//! ```text
//! engine=NAME keys=N fpr=P bits_per_key=B insert_per_s=X lookup_per_s=Y measured_fpr=F
//! ```
//!
//! `insert_per_s` builds a fresh filter from empty to `keys` per round; `lookup_per_s` checks
//! present keys in batches (leakbloom's `check_batch`, `bloomfilter`'s `check` in a loop); both
//! are medians over `--rounds`. `measured_fpr` checks a separate stream of random (absent) keys;
//! the rate of those absent checks and the huge-page backing go to stderr.

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use bloomfilter::Bloom;
use leakbloom_cluster::Key;
use leakbloom_filter::Filter;
use rand::{rngs::StdRng, RngCore, SeedableRng};

/// Keys per insert and check call: a typical client batch, far above the prefetch distance.
const BATCH: usize = 4096;
/// Present keys checked per round: a random sample of the inserted keys touches random blocks
/// just like all of them would, and keeps the slow baseline's rounds short.
const LOOKUP_SAMPLE: usize = 10_000_000;
/// Absent checks aim for this many expected false positives (±10 % noise at 100).
const EXPECTED_FALSE_POSITIVES: f64 = 100.0;
/// Fewest absent checks, so tiny runs still measure something.
const MIN_ABSENT: u64 = 1_000_000;
/// Most absent checks: 1e8 at 1e-6 takes ~25 s on the `bloomfilter` baseline.
const MAX_ABSENT: u64 = 100_000_000;
/// Absent keys generated per step; generation is not timed.
const ABSENT_CHUNK: usize = 1 << 20;
/// Mixed into `--seed` for the absent keys, so they differ from the inserted ones.
const ABSENT_SEED_SALT: u64 = 0xA85E_17C0_FFEE_0001;

/// Arguments of `leakbloom bench filter`.
#[derive(clap::Args, Debug)]
pub struct FilterBenchArgs {
    /// Keys inserted into each engine (also their capacity).
    #[arg(long, default_value_t = 10_000_000)]
    pub keys: u64,
    /// Target false-positive rate both engines are sized for.
    #[arg(long, default_value_t = 1e-6)]
    pub fpr: f64,
    /// Rounds of each timed phase; the median is printed.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seed of the random keys (same keys for both engines).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One engine under test: how to build, fill and check it.
trait Engine: Sized {
    const NAME: &'static str;
    fn new(keys: u64, fpr: f64) -> Result<Self>;
    fn insert(&mut self, keys: &[Key]);
    fn check(&self, keys: &[Key], out: &mut [bool]);
    fn bits(&self) -> u64;
    fn report(&self) {}
}

impl Engine for Filter {
    const NAME: &'static str = "leakbloom";

    fn new(keys: u64, fpr: f64) -> Result<Self> {
        Filter::with_capacity(keys, fpr).context("creating the leakbloom filter")
    }

    fn insert(&mut self, keys: &[Key]) {
        self.insert_batch(keys);
    }

    fn check(&self, keys: &[Key], out: &mut [bool]) {
        self.check_batch(keys, out);
    }

    fn bits(&self) -> u64 {
        self.geometry().bits()
    }

    fn report(&self) {
        if let Some(huge) = self.huge_page_bytes() {
            eprintln!(
                "# leakbloom: {huge} of {} bytes on transparent huge pages",
                self.memory_bytes()
            );
        }
    }
}

impl Engine for Bloom<Key> {
    const NAME: &'static str = "bloomfilter";

    fn new(keys: u64, fpr: f64) -> Result<Self> {
        let items = usize::try_from(keys).context("--keys does not fit in memory")?;
        Bloom::new_for_fp_rate(items, fpr).map_err(|e| anyhow::anyhow!("bloomfilter: {e}"))
    }

    fn insert(&mut self, keys: &[Key]) {
        for key in keys {
            self.set(key);
        }
    }

    fn check(&self, keys: &[Key], out: &mut [bool]) {
        for (key, slot) in keys.iter().zip(out) {
            *slot = Bloom::check(self, key);
        }
    }

    fn bits(&self) -> u64 {
        self.len()
    }
}

/// Runs the comparison and prints one line per engine.
pub fn run(args: &FilterBenchArgs) -> Result<()> {
    ensure!(args.keys >= 1, "--keys must be at least 1");
    ensure!(
        args.fpr > 0.0 && args.fpr < 1.0,
        "--fpr must be between 0 and 1 (exclusive), e.g. 1e-6"
    );
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let count = usize::try_from(args.keys).context("--keys does not fit in memory")?;
    eprintln!("# generating {count} keys (seed {})", args.seed);
    let keys = random_keys(count, args.seed);
    measure::<Filter>(args, &keys)?;
    measure::<Bloom<Key>>(args, &keys)?;
    Ok(())
}

fn random_keys(count: usize, seed: u64) -> Vec<Key> {
    let mut keys = vec![[0u8; 32]; count];
    fill_random(&mut keys, &mut StdRng::seed_from_u64(seed));
    keys
}

fn fill_random(keys: &mut [Key], rng: &mut StdRng) {
    for key in keys {
        rng.fill_bytes(key);
    }
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn measure<E: Engine>(args: &FilterBenchArgs, keys: &[Key]) -> Result<()> {
    // Inserts: a fresh filter per round; the last one is kept for the checks.
    let mut insert_rates = Vec::new();
    let mut filled = None;
    for _ in 0..args.rounds {
        drop(filled.take());
        let mut engine = E::new(args.keys, args.fpr)?;
        let start = Instant::now();
        for batch in keys.chunks(BATCH) {
            engine.insert(batch);
        }
        insert_rates.push(keys.len() as f64 / start.elapsed().as_secs_f64());
        filled = Some(engine);
    }
    let engine = filled.expect("rounds >= 1");
    engine.report();

    // Present checks: every answer must be true.
    let sample = &keys[..keys.len().min(LOOKUP_SAMPLE)];
    let mut out = vec![false; BATCH];
    let mut lookup_rates = Vec::new();
    for _ in 0..args.rounds {
        let mut missed = 0usize;
        let start = Instant::now();
        for batch in sample.chunks(BATCH) {
            let out = &mut out[..batch.len()];
            engine.check(batch, out);
            missed += out.iter().filter(|&&present| !present).count();
        }
        lookup_rates.push(sample.len() as f64 / start.elapsed().as_secs_f64());
        if missed > 0 {
            bail!(
                "{}: {missed} false negatives: the engine is broken",
                E::NAME
            );
        }
    }

    // Absent checks: random keys (a collision with an inserted 256-bit key is impossible in
    // practice), generated in untimed chunks.
    let absent_total =
        ((EXPECTED_FALSE_POSITIVES / args.fpr).ceil() as u64).clamp(MIN_ABSENT, MAX_ABSENT);
    let mut rng = StdRng::seed_from_u64(args.seed ^ ABSENT_SEED_SALT);
    let mut absent = vec![[0u8; 32]; ABSENT_CHUNK];
    let mut out = vec![false; ABSENT_CHUNK];
    let (mut checked, mut hits, mut seconds) = (0u64, 0u64, 0.0);
    while checked < absent_total {
        let n = (absent_total - checked).min(ABSENT_CHUNK as u64) as usize;
        fill_random(&mut absent[..n], &mut rng);
        let start = Instant::now();
        for (batch, out) in absent[..n].chunks(BATCH).zip(out[..n].chunks_mut(BATCH)) {
            engine.check(batch, out);
        }
        seconds += start.elapsed().as_secs_f64();
        hits += out[..n].iter().filter(|&&hit| hit).count() as u64;
        checked += n as u64;
    }
    eprintln!(
        "# {}: absent lookup_per_s={:.0} over {checked} keys",
        E::NAME,
        checked as f64 / seconds
    );

    println!(
        "engine={} keys={} fpr={:e} bits_per_key={:.2} insert_per_s={:.0} lookup_per_s={:.0} measured_fpr={:e}",
        E::NAME,
        args.keys,
        args.fpr,
        engine.bits() as f64 / args.keys as f64,
        median(insert_rates),
        median(lookup_rates),
        hits as f64 / checked as f64,
    );
    Ok(())
}
