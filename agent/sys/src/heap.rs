//! Returning free heap pages to the kernel.

/// Returns free heap pages to the kernel (glibc's `malloc_trim(0)`); true if any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[must_use]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no
    // pointer from us and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns free heap pages to the kernel (not available with this C library).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[must_use]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn can_be_called_any_time() {
        let _ = super::release_free_memory();
        let _ = super::release_free_memory();
    }
}
