//! Allocator settings for training processes.
//!
//! glibc's `malloc` serves each block above its mmap threshold with a fresh `mmap` and returns it
//! to the kernel on `free`. A training step allocates and frees many activation and gradient
//! buffers of megabytes, so under the default settings every step faults those pages in and has
//! the kernel zero them again (measured here: a third of an SFT step's time, much of it system
//! time, and worse with two shards faulting at once). [`keep_freed_memory`] pins the threshold
//! at glibc's maximum (32 MiB) and stops `free` from trimming the heap, so freed buffers are
//! reused by the next step. Memory already freed stays mapped to the process; its peak is
//! unchanged.
//!
//! This is the only `unsafe` in the workspace (`unsafe_code` is denied everywhere else): one
//! call to a C function with integer arguments, made before any other thread starts.

/// Tunes glibc's allocator (module docs); a no-op on other platforms.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    // glibc's `mallopt` parameter numbers (malloc.h).
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: `mallopt` only adjusts allocator parameters; it is called from `main` before any
    // other thread exists, with values glibc documents as valid (it rejects others by
    // returning 0, which leaves the defaults: harmless).
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_TOP_PAD, 64 << 20);
    }
}

/// Tunes glibc's allocator (module docs); a no-op on other platforms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
