//! Terminal rendering: `tracing` logs with the energy statistics an EBM practitioner watches,
//! and `indicatif` progress bars (hidden with --quiet or when stderr is not a terminal).

use std::io::IsTerminal;

use energy_matching::run::RunEvent;
use indicatif::{ProgressBar, ProgressStyle};

/// Sets up `tracing` on stderr (`RUST_LOG` overrides; --quiet shows warnings only).
pub fn init_tracing(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Whether bars are shown: not quiet, and stderr is a terminal.
fn shown(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A bar of `total` steps drawn with `template` (indicatif's default if it does not parse).
fn styled_bar(total: u64, template: &str) -> ProgressBar {
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// Progress bars driven by [`RunEvent`]s.
pub struct Ui {
    bar: Option<ProgressBar>,
    show: bool,
}

impl Ui {
    /// Bars only when not quiet and stderr is a terminal.
    pub fn new(quiet: bool) -> Self {
        Self {
            bar: None,
            show: shown(quiet),
        }
    }

    fn bar(&mut self, total: u64, pos: u64, template: &str) -> Option<&ProgressBar> {
        if !self.show {
            return None;
        }
        if self
            .bar
            .as_ref()
            .map(|b| b.length() != Some(total))
            .unwrap_or(true)
        {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            let b = styled_bar(total, template);
            b.set_position(pos);
            self.bar = Some(b);
        }
        self.bar.as_ref()
    }

    /// Handles one event.
    pub fn event(&mut self, e: RunEvent) {
        match e {
            RunEvent::TrainStart { from, total } => {
                self.bar(
                    total,
                    from.saturating_sub(1),
                    "{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg} (eta {eta})",
                );
            }
            RunEvent::Step {
                stats,
                steps_per_sec,
                logged,
            } => {
                if let Some(b) = self.bar.as_ref() {
                    b.set_position(stats.step);
                    if logged {
                        b.set_message(format!(
                            "{} flow {:.4}",
                            stats.phase.name(),
                            stats.flow_loss
                        ));
                    }
                }
                if logged {
                    match (stats.e_pos, stats.e_neg) {
                        (Some(p), Some(n)) => tracing::info!(
                            "step {} {}: loss {:.4} flow {:.4} cd {:.4} | V+ mean {:.3} [{:.3}, {:.3}] sd {:.3} | V- mean {:.3} [{:.3}, {:.3}] sd {:.3} | |g| {:.3} lr {:.2e} {:.1} it/s",
                            stats.step, stats.phase.name(), stats.loss, stats.flow_loss, stats.cd_loss.unwrap_or(0.0),
                            p.mean, p.min, p.max, p.std, n.mean, n.min, n.max, n.std, stats.grad_norm, stats.lr, steps_per_sec
                        ),
                        _ => tracing::info!(
                            "step {} {}: flow loss {:.4} | |g| {:.3} lr {:.2e} {:.1} it/s",
                            stats.step, stats.phase.name(), stats.flow_loss, stats.grad_norm, stats.lr, steps_per_sec
                        ),
                    }
                }
            }
            RunEvent::Checkpoint(p) => tracing::info!("checkpoint {}", p.display()),
            RunEvent::Sampling { done, total } => {
                if let Some(b) = self.bar(
                    total,
                    0,
                    "{elapsed_precise} [{bar:30}] sampling {pos}/{len} steps",
                ) {
                    b.set_position(done);
                }
            }
            RunEvent::Features { of, done, total } => {
                if let Some(b) = self.bar(
                    total,
                    0,
                    "{elapsed_precise} [{bar:30}] FID features of {msg} {pos}/{len} (eta {eta})",
                ) {
                    b.set_message(of.to_string());
                    b.set_position(done);
                }
            }
            RunEvent::Note(s) => tracing::info!("{s}"),
        }
    }

    /// Clears any bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A bar counting items (images) that any thread may advance; hidden like [`Ui`]'s bars.
pub struct Counter(Option<ProgressBar>);

/// A [`Counter`] of `total` items labelled `what`.
pub fn counter(quiet: bool, total: usize, what: &str) -> Counter {
    if !shown(quiet) {
        return Counter(None);
    }
    let b = styled_bar(
        total as u64,
        "{elapsed_precise} [{bar:30}] {msg} {pos}/{len} (eta {eta})",
    );
    b.set_message(what.to_string());
    Counter(Some(b))
}

impl Counter {
    /// `done` items are finished.
    pub fn set(&self, done: usize) {
        if let Some(b) = &self.0 {
            b.set_position(done as u64);
        }
    }
}

impl Drop for Counter {
    /// Clears the bar, also when the work failed.
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
