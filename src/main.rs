//! The `mica` binary: a thin wrapper over `mica::cli`.

/// mimalloc instead of glibc's malloc: a training step allocates and frees many
/// megabyte-sized tensors, which glibc hands back to the kernel and faults in again
/// (about a tenth of a step at the bench shape).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_t` (mimalloc.h; the sys crate
/// names no constant for it): how long freed memory waits before going back to the OS.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // A closed pipe on stdout or stderr (`mica inspect X | head -1`) ends the process
    // quietly, as for any Unix tool, instead of a panic in `println!`. Runs stay
    // consistent: every file is written atomically, so a run stopped this way resumes.
    // SAFETY: restores the default disposition of one signal before any thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Never purge: the same tensor sizes come back every step, and purged pages would
    // be faulted in again (mica bench, MulT at the bench shape: 2.9 s → 2.5 s a step).
    // SAFETY: sets one of mimalloc's integer options; no pointer is involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    if let Err(e) = mica::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
