//! What `bench requests` reads of a callgrind dump: the instructions executed (the `totals:`
//! or `summary:` line, whose first event is `Ir`), the calls to the allocator (the `calls=`
//! lines under a `cfn=` naming one of [`ALLOCATORS`]), and the instructions of the portable
//! SHA-256 ([`PORTABLE_SHA256`]'s own cost lines: those under its `fn=`, less the line after
//! each `calls=`, which is a callee's inclusive cost).
//!
//! Names may be compressed: the first mention is `(id) name`, later ones `(id)` alone.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

/// The functions whose calls count as allocations (`free` does not).
const ALLOCATORS: [&str; 6] = [
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
];

/// sha2's SHA-256 without the CPU's SHA instructions. Valgrind does not emulate those, so
/// under callgrind the agent hashes with this function (some 3,500 instructions a block),
/// while on the machine it uses the `sha2::sha256::x86` one (a few hundred).
const PORTABLE_SHA256: &str = "sha2::sha256::compress256";

/// Instructions and allocations, over a phase or per request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Counts {
    pub(crate) instructions: f64,
    pub(crate) allocations: f64,
    /// Of `instructions`, those of [`PORTABLE_SHA256`].
    pub(crate) sha256: f64,
}

impl Counts {
    /// `self` less `other`.
    pub(crate) fn minus(&self, other: &Counts) -> Counts {
        Counts {
            instructions: self.instructions - other.instructions,
            allocations: self.allocations - other.allocations,
            sha256: self.sha256 - other.sha256,
        }
    }

    /// `self` shared among `n`.
    pub(crate) fn per(&self, n: u64) -> Counts {
        #[allow(clippy::cast_precision_loss, reason = "a count of requests")]
        let n = n as f64;
        Counts {
            instructions: self.instructions / n,
            allocations: self.allocations / n,
            sha256: self.sha256 / n,
        }
    }
}

/// The name a `fn=`/`cfn=` value stands for, learning compressed names as they come.
fn resolve(value: &str, names: &mut HashMap<String, String>) -> String {
    let value = value.trim();
    let Some(rest) = value.strip_prefix('(') else {
        return value.to_owned();
    };
    let Some((id, name)) = rest.split_once(')') else {
        return value.to_owned();
    };
    let name = name.trim();
    if name.is_empty() {
        names.get(id).cloned().unwrap_or_default()
    } else {
        names.insert(id.to_owned(), name.to_owned());
        name.to_owned()
    }
}

/// A callee name stripped of callgrind's recursion and context marks (`malloc'2`).
fn base_name(name: &str) -> &str {
    name.split('\'').next().unwrap_or(name)
}

/// The counts of one dump.
pub(crate) fn parse(text: &str) -> Result<Counts> {
    let mut names = HashMap::new();
    let mut callee = String::new();
    let mut in_sha256 = false;
    let mut after_calls = false;
    let mut instructions = None;
    let mut allocations = 0u64;
    let mut sha256 = 0u64;
    for line in text.lines() {
        let was_after_calls = std::mem::take(&mut after_calls);
        if line.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*')) {
            // A cost line: position, then the events (Ir alone).
            if in_sha256 && !was_after_calls {
                let cost = line.split_whitespace().nth(1).unwrap_or("0");
                sha256 += cost
                    .parse::<u64>()
                    .with_context(|| format!("bad line {line:?}"))?;
            }
        } else if let Some(value) = line.strip_prefix("cfn=") {
            callee = resolve(value, &mut names);
        } else if let Some(value) = line.strip_prefix("fn=") {
            in_sha256 = base_name(&resolve(value, &mut names)) == PORTABLE_SHA256;
        } else if let Some(rest) = line.strip_prefix("calls=") {
            after_calls = true;
            if ALLOCATORS.contains(&base_name(&callee)) {
                let count = rest.split_whitespace().next().unwrap_or("");
                allocations += count
                    .parse::<u64>()
                    .with_context(|| format!("bad line {line:?}"))?;
            }
        } else if let Some(total) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            let first = total.split_whitespace().next().unwrap_or("");
            instructions = Some(
                first
                    .parse::<u64>()
                    .with_context(|| format!("bad line {line:?}"))?,
            );
        }
    }
    let Some(instructions) = instructions else {
        bail!("no totals: or summary: line (not a callgrind dump?)");
    };
    #[allow(clippy::cast_precision_loss, reason = "counts well below 2^52")]
    Ok(Counts {
        instructions: instructions as f64,
        allocations: allocations as f64,
        sha256: sha256 as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_totals_allocator_calls_and_sha256_with_compressed_names() {
        let dump = "\
version: 1
events: Ir
fn=(1) main
0 10
cfn=(6) sha2::sha256::compress256
calls=2 0
0 7000
cfn=(2) malloc
calls=3 0
0 300
cfn=(3) free
calls=3 0
0 90
fn=(6)
0 6900
+2 100
fn=(4) grow
cfn=(2)
calls=2 0
0 200
cfn=(5) realloc'2
calls=1 0
0 50
summary: 12345
totals: 12345
";
        let counts = parse(dump).unwrap();
        assert_eq!(
            counts,
            Counts {
                instructions: 12345.0,
                allocations: 6.0,
                sha256: 7000.0,
            }
        );
    }

    #[test]
    fn a_file_without_totals_is_refused() {
        let err = parse("events: Ir\nfn=main\n").unwrap_err();
        assert!(err.to_string().contains("no totals"), "{err}");
    }

    #[test]
    fn per_request_arithmetic() {
        let many = Counts {
            instructions: 1_020_000.0,
            allocations: 2_003.0,
            sha256: 0.0,
        };
        let one = Counts {
            instructions: 30_000.0,
            allocations: 13.0,
            sha256: 0.0,
        };
        let per = many.minus(&one).per(99);
        assert!((per.instructions - 10_000.0).abs() < 1e-9);
        assert!((per.allocations - 20.101_010_101).abs() < 1e-6);
    }
}
