//! The process allocator (mimalloc) and the two options that keep idle memory small.
//!
//! mimalloc (v3) by default commits its arenas eagerly, and memory in an eagerly committed
//! arena is not given back when freed; it also waits a second before purging freed pages.
//! With tens of thousands of connections set up in a burst that left ~3.4 KiB of RSS a
//! pair right after (8,000 pairs activated through the component), against ~1.2 KiB with
//! eager arena commit off (`tests/component_memory.rs`). The relay's hot path allocates
//! nothing, so the extra commit and purge calls cost only at connection setup.

/// `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc v3's
/// `mi_option_t` (include/mimalloc.h); `option_indices_match_mimalloc` checks them.
pub const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
pub const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Set in the environment of the process that has the options from its start.
const EAGER_VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// Applies the options; call first thing in `main`, before threads start.
///
/// Eager arena commit is decided when mimalloc reserves its first arena, which happens at
/// the first allocation, before `main`: only the environment can set it in time. So a
/// process started without `MIMALLOC_ARENA_EAGER_COMMIT` sets it and executes itself
/// again (same pid, arguments and everything else; once), unless the operator set it.
pub fn tune() {
    if std::env::var_os(EAGER_VAR).is_none() {
        use std::os::unix::process::CommandExt;
        let args: Vec<_> = std::env::args_os().collect();
        if let Some((argv0, rest)) = args.split_first() {
            let err = std::process::Command::new("/proc/self/exe")
                .arg0(argv0)
                .args(rest)
                .env(EAGER_VAR, "0")
                .exec();
            // Not fatal: the proxy runs, with more memory per connection.
            eprintln!("streamhost: cannot re-execute itself to tune the allocator: {err}");
        }
    }
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; it is not
    // thread safe, which is why it runs before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "STREAMHOST_ALLOCATOR_CHILD";

    #[test]
    fn option_indices_match_mimalloc() {
        // SAFETY: reading options has no preconditions.
        let read = || unsafe {
            (
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
            )
        };
        if std::env::var(CHILD).is_ok() {
            println!("options {:?}", read());
            return;
        }
        // mimalloc reads MIMALLOC_<OPTION> from the environment when the process starts:
        // in a child started with them, the indices above must read back what the names
        // say.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "allocator::tests::option_indices_match_mimalloc"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "7")
            .env("MIMALLOC_PURGE_DELAY", "1234")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("options (7, 1234)"), "{text}");
    }
}
