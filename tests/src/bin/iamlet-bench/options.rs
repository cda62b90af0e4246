//! The options of `bench imds`, read once at start from the environment variables
//! `cargo xtask bench imds` sets from its flags (`--cpus`, `--rounds`, `--wrk-threads`,
//! `--busy-cpus`). A bad value is refused with the flag's name before anything runs.

use std::ops::RangeInclusive;

use anyhow::{bail, Result};

use crate::wrk::Placement;

/// Alternating rounds, unless `--rounds` says otherwise.
pub(crate) const IMDS_ROUNDS: usize = 3;

/// What `bench imds` was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ImdsOptions {
    /// Where wrk and the servers run (`IAMLET_BENCH_CPUS`, `--cpus`).
    pub(crate) placement: Placement,
    /// Alternating rounds (`IAMLET_BENCH_ROUNDS`, `--rounds`).
    pub(crate) rounds: usize,
    /// wrk's threads in place of each load's own, never more than its connections
    /// (`IAMLET_BENCH_WRK_THREADS`, `--wrk-threads`).
    pub(crate) wrk_threads: Option<u32>,
    /// Threads spinning while wrk runs (`IAMLET_BENCH_BUSY_CPUS`, `--busy-cpus`).
    pub(crate) busy_cpus: usize,
}

impl ImdsOptions {
    /// From this process's environment, on this machine's CPUs.
    pub(crate) fn from_env() -> Result<ImdsOptions> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        ImdsOptions::parse(|var| std::env::var(var).ok(), cpus)
    }

    /// From `get` (an environment), on a machine with `cpus` CPUs.
    fn parse(get: impl Fn(&str) -> Option<String>, cpus: usize) -> Result<ImdsOptions> {
        let number = |var: &str, flag: &str, what: &str, range: RangeInclusive<usize>| {
            get(var)
                .map(|text| whole_number(&text, flag, what, range))
                .transpose()
        };
        let wrk_threads = number(
            "IAMLET_BENCH_WRK_THREADS",
            "--wrk-threads",
            "threads",
            1..=256,
        )?;
        Ok(ImdsOptions {
            placement: Placement::parse(get("IAMLET_BENCH_CPUS").as_deref(), cpus)?,
            rounds: number("IAMLET_BENCH_ROUNDS", "--rounds", "rounds", 1..=100)?
                .unwrap_or(IMDS_ROUNDS),
            wrk_threads: wrk_threads.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            busy_cpus: number(
                "IAMLET_BENCH_BUSY_CPUS",
                "--busy-cpus",
                "spinning threads",
                0..=64,
            )?
            .unwrap_or(0),
        })
    }
}

/// `text` as a whole number in `range`, or an error naming `flag` and what it counts.
fn whole_number(text: &str, flag: &str, what: &str, range: RangeInclusive<usize>) -> Result<usize> {
    match text.trim().parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => bail!(
            "{flag} {text:?}: want a number of {what}, {} to {}",
            range.start(),
            range.end()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ImdsOptions> {
        ImdsOptions::parse(
            |var| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| (*v).to_string())
            },
            2,
        )
    }

    #[test]
    fn unset_options_take_their_defaults() {
        assert_eq!(
            parse(&[]).unwrap(),
            ImdsOptions {
                placement: Placement::Shared,
                rounds: IMDS_ROUNDS,
                wrk_threads: None,
                busy_cpus: 0,
            }
        );
    }

    #[test]
    fn every_option_is_read() {
        let options = parse(&[
            ("IAMLET_BENCH_CPUS", "split"),
            ("IAMLET_BENCH_ROUNDS", "7"),
            ("IAMLET_BENCH_WRK_THREADS", "1"),
            ("IAMLET_BENCH_BUSY_CPUS", "2"),
        ])
        .unwrap();
        assert_eq!(
            options,
            ImdsOptions {
                placement: Placement::Split,
                rounds: 7,
                wrk_threads: Some(1),
                busy_cpus: 2,
            }
        );
    }

    #[test]
    fn a_bad_value_names_its_flag_and_bounds() {
        for (var, value, want) in [
            (
                "IAMLET_BENCH_ROUNDS",
                "0",
                "--rounds \"0\": want a number of rounds, 1 to 100",
            ),
            ("IAMLET_BENCH_ROUNDS", "three", "--rounds \"three\""),
            ("IAMLET_BENCH_WRK_THREADS", "0", "--wrk-threads \"0\""),
            ("IAMLET_BENCH_WRK_THREADS", "-1", "--wrk-threads \"-1\""),
            ("IAMLET_BENCH_BUSY_CPUS", "65", "spinning threads, 0 to 64"),
            ("IAMLET_BENCH_CPUS", "both", "--cpus \"both\""),
        ] {
            let err = parse(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(want), "{var}={value}: {err}");
        }
    }
}
