//! Process-wide settings for tensor work: threads, spinning, and the allocator.

/// Sets up this process for tensor work; call it before any: the CPU thread count candle's
/// kernels use (read from `RAYON_NUM_THREADS`), how long candle's elementwise pool spins before
/// it sleeps, and the allocator (freed memory stays in the process; see `keep_freed_memory`).
pub fn prepare_process(threads: Option<usize>) -> Result<(), String> {
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    } else if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle looks its thread count up on every matmul and, without this variable, reads
        // /proc/cpuinfo each time (10 % of a small training step here): look it up once.
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // candle's elementwise ops run on a pool of their own beside rayon's, whose threads spin
        // 25,000 times after each op before they sleep, taking a core from the next kernel:
        // 7 % of a small training step on 2 cores. Sleep sooner.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "500");
    }
    keep_freed_memory();
    Ok(())
}

/// Keeps freed memory in the process instead of returning it to the OS (glibc's allocator): a
/// forward or a training step allocates and frees tensors of the same sizes every time, and by
/// default glibc serves the large ones with fresh mappings and trims its heap after them, so that
/// each step faults its memory back in page by page (measured: 10 % of a proxy training step on
/// one thread, 127 k page faults against 69 k). Large blocks come from the heap (up to glibc's
/// 32 MiB limit) and the heap is not trimmed; the process keeps its peak footprint.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 << 20;
        const TOP_PAD: libc::c_int = 16 << 20;
        // SAFETY: mallopt only changes allocator parameters; it is called before the process
        // allocates any tensor, and it reports (and ignores) values it does not accept.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}
