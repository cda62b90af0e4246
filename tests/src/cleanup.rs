//! Removing leftovers of earlier test runs that crashed or were killed before their
//! `Drop`s ran.
//!
//! Every name this crate creates carries the pid of the creating test process:
//! network namespaces `iml-node-<pid>-<n>` and `iml-<pid>-<n>-<k>`, cgroups
//! `iamlet-test-<pid>-<n>`. A leftover is stale when that pid is no longer alive; those of
//! live processes (other test binaries running concurrently) are never touched.

use std::fs;
use std::path::Path;

use crate::cgroup::{cgroup2_root, remove_tree};
use crate::netns;

/// Prefix of every network namespace this crate creates.
pub const NETNS_PREFIX: &str = "iml-";
/// Prefix of every top-level cgroup this crate creates.
pub const CGROUP_PREFIX: &str = "iamlet-test-";

/// The creator pid encoded in one of our names (`rest` is the name without its prefix):
/// the first all-digit `-`-separated component.
fn creator_pid(rest: &str) -> Option<u32> {
    rest.split('-')
        .find(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
}

fn is_stale(rest: &str) -> bool {
    match creator_pid(rest) {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// Removes network namespaces named `iml-*` and cgroups `<cgroup2 root>/iamlet-test-*`
/// whose creating process is gone (processes still inside are killed first). Returns what
/// was removed; failures are logged to stderr, never returned (another test process may be
/// cleaning the same leftovers concurrently).
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    // Cgroups first: their processes may be what keeps a namespace busy.
    match cgroup2_root() {
        Ok(root) => match fs::read_dir(root) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else {
                        continue;
                    };
                    if !is_stale(rest) {
                        continue;
                    }
                    match remove_tree(&entry.path()) {
                        Ok(()) => removed.push(entry.path().display().to_string()),
                        Err(e) => {
                            eprintln!("iamlet-tests: cannot remove stale cgroup {name}: {e:#}");
                        }
                    }
                }
            }
            Err(e) => eprintln!("iamlet-tests: cannot list {}: {e}", root.display()),
        },
        Err(e) => eprintln!("iamlet-tests: {e:#}"),
    }
    match netns::list() {
        Ok(names) => {
            for name in names {
                let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                    continue;
                };
                if !is_stale(rest) {
                    continue;
                }
                match netns::delete(&name) {
                    Ok(()) => removed.push(format!("netns {name}")),
                    Err(e) => eprintln!("iamlet-tests: cannot delete stale netns {name}: {e:#}"),
                }
            }
        }
        Err(e) => eprintln!("iamlet-tests: {e:#}"),
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn pid_is_first_numeric_component() {
        assert_eq!(creator_pid("node-1234-0"), Some(1234));
        assert_eq!(creator_pid("1234-0-3"), Some(1234));
        assert_eq!(creator_pid("99-1"), Some(99));
        assert_eq!(creator_pid("probe-x"), None);
    }
}
