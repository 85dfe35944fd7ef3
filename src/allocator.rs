//! The memory allocator's settings. criguard runs on mimalloc (set in `main.rs`): the proxy's
//! threads allocate what the audit writer's thread frees, which the C library's allocator
//! makes expensive (arena locks, consolidation); mimalloc frees across threads cheaply.

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the `mi_option_e` list); the Rust
/// bindings leave it out. Checked by the test below against the option's default (1000 ms,
/// `src/options.c`), so that an upgrade that moves it fails the tests instead of setting
/// another option.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed is given back to the system at once instead of a second later: a burst of large
/// answers (ListContainers of 5000 containers, several MB each) would otherwise hold the peak
/// resident memory well above what is in use (40 MiB instead of 22 in the load generator's
/// 5000-container run).
pub fn return_freed_memory_at_once() {
    // SAFETY: sets a process-wide option; called first thing in main, before other threads.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option at that index is the purge delay, whose default is 1000 (ms). (The tests run
    /// on the system allocator; mimalloc is linked all the same, and its options readable.)
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads a process-wide option.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 1000);
    }
}
