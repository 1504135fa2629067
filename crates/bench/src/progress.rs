//! Terminal progress for benchmarks, and the thread-count setting.

use indicatif::{ProgressBar, ProgressStyle};

use crate::Progress;

/// Sets the CPU thread count candle's kernels use (read from `RAYON_NUM_THREADS`), and how long
/// candle's elementwise pool spins before it sleeps. Call before any
/// tensor work.
pub fn set_threads(threads: Option<usize>) -> Result<(), String> {
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
    Ok(())
}

/// A progress bar on stderr for one benchmark, and the callback that drives it.
pub fn progress_bar(label: &str) -> (ProgressBar, impl FnMut(Progress)) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    let b = bar.clone();
    let update = move |p: Progress| match p {
        Progress::Init => b.set_message("creating weights"),
        Progress::Warmup(i, n) => b.set_message(format!("warm-up {i}/{n}")),
        Progress::Run(i, n, t) => {
            b.set_length(n as u64);
            b.set_position(i as u64);
            b.set_message(format!("last {t:.3} s"));
        }
        Progress::Block(i, n) => b.set_message(format!("per-block {i}/{n}")),
    };
    (bar, update)
}
