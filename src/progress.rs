//! Progress that works both in a terminal (a bar per epoch) and in a plain log (one line
//! per epoch).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of one epoch.
pub struct EpochProgress {
    bar: Option<ProgressBar>,
    label: String,
    start: Instant,
}

impl EpochProgress {
    /// Starts an epoch of `steps` batches, labelled e.g. `linear AE epoch 3/20`.
    pub fn new(label: impl Into<String>, steps: usize) -> Self {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar
        });
        EpochProgress {
            bar,
            label,
            start: Instant::now(),
        }
    }

    /// One batch done, with its loss.
    pub fn step(&self, loss: f64) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.6}"));
        }
    }

    /// Ends the epoch: prints one line with the mean loss and the time; returns the time.
    pub fn finish(self, mean_loss: f64) -> Duration {
        let t = self.start.elapsed();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{}: loss {mean_loss:.6} in {:.2} s", self.label, t.as_secs_f64());
        t
    }
}
