//! Running a seeded simulation over many seeds, and replaying the one that failed.
//!
//! `cargo test` runs a default number of seeds from 0; environment variables named after the
//! simulation change that (`{PREFIX}_SEEDS=N` runs N seeds from `{PREFIX}_FIRST_SEED`, default
//! 0; `{PREFIX}_SEED=S` replays seed S alone), and a failing seed prints the command that
//! replays it.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

/// How one simulation test chooses its seeds.
#[derive(Debug, Clone)]
pub struct Seeds {
    /// The prefix of its environment variables (`LEAKBLOOM_SIM`).
    pub prefix: &'static str,
    /// Seeds run when the environment names none.
    pub default_count: u64,
    /// The command that runs the test (`cargo test -p leakbloom-raft --test simulation`),
    /// printed with the seed when one fails.
    pub replay: &'static str,
}

impl Seeds {
    /// Runs `run` for every seed chosen; returns its results in seed order. A seed that panics
    /// prints how to replay it, then fails the test with its panic.
    pub fn run<T>(&self, run: impl Fn(u64) -> T) -> Vec<T> {
        if let Some(seed) = self.number("SEED") {
            return vec![self.reporting(seed, &run)];
        }
        let count = self.number("SEEDS").unwrap_or(self.default_count);
        let first = self.number("FIRST_SEED").unwrap_or(0);
        let start = Instant::now();
        let results = (first..first + count)
            .map(|seed| self.reporting(seed, &run))
            .collect();
        eprintln!("{count} seeds from {first} in {:.1?}", start.elapsed());
        results
    }

    fn reporting<T>(&self, seed: u64, run: &impl Fn(u64) -> T) -> T {
        match std::panic::catch_unwind(AssertUnwindSafe(|| run(seed))) {
            Ok(result) => result,
            Err(panic) => {
                eprintln!(
                    "seed {seed} failed; replay it with:\n  {}_SEED={seed} {} -- --nocapture",
                    self.prefix, self.replay
                );
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// `{prefix}_{name}` as a number, if set.
    fn number(&self, name: &str) -> Option<u64> {
        let var = format!("{}_{name}", self.prefix);
        let value = std::env::var(&var).ok()?;
        Some(
            value
                .parse()
                .unwrap_or_else(|_| panic!("{var} must be a number, not {value:?}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_default_seeds_in_order() {
        let seeds = Seeds {
            prefix: "LEAKBLOOM_TESTKIT_UNSET",
            default_count: 4,
            replay: "cargo test",
        };
        assert_eq!(seeds.run(|seed| seed * 10), [0, 10, 20, 30]);
    }

    #[test]
    fn a_failing_seed_fails_the_run() {
        let seeds = Seeds {
            prefix: "LEAKBLOOM_TESTKIT_UNSET",
            default_count: 5,
            replay: "cargo test",
        };
        let failed = std::panic::catch_unwind(|| {
            seeds.run(|seed| assert_ne!(seed, 3, "seed three"));
        });
        assert!(failed.is_err());
    }
}
