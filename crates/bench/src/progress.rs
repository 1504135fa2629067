//! Terminal progress for benchmarks.

use indicatif::{ProgressBar, ProgressStyle};

use crate::Progress;

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
        Progress::Profile(i, n) => b.set_message(format!("profile {i}/{n}")),
    };
    (bar, update)
}
