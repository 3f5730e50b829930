//! Renders library progress events: bars per layer on a terminal, plain
//! step lines on stderr otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use unistore::progress::{ComponentId, Progress, ProgressEvent, ProgressReporter};

struct Reporter {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

fn key(id: &ComponentId) -> String {
    format!("{id:?}")
}

fn short(id: &ComponentId) -> String {
    let s = format!("{id}");
    let s = s.trim_start_matches("sha256:");
    s.chars().take(20).collect()
}

impl ProgressReporter for Reporter {
    fn report(&self, event: ProgressEvent) {
        let Some(multi) = &self.multi else {
            if let ProgressEvent::Message(m) = event {
                eprintln!("{m}");
            }
            return;
        };
        let mut bars = self.bars.lock().unwrap();
        match event {
            ProgressEvent::Message(m) => {
                let _ = multi.println(m);
            }
            ProgressEvent::Started { id, total, .. } => {
                let bar = multi.add(ProgressBar::new(total.unwrap_or(0)));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                bar.set_prefix(short(&id));
                bars.insert(key(&id), bar);
            }
            ProgressEvent::Progress { id, fetched, total } => {
                if let Some(b) = bars.get(&key(&id)) {
                    if let Some(t) = total {
                        b.set_length(t);
                    }
                    b.set_position(fetched);
                }
            }
            ProgressEvent::Skipped { id } => {
                if let Some(b) = bars.remove(&key(&id)) {
                    b.finish_with_message("present");
                }
            }
            ProgressEvent::Done { id, .. } => {
                if let Some(b) = bars.remove(&key(&id)) {
                    b.finish();
                }
            }
            _ => {}
        }
    }
}

/// A reporter for this process: bars when stderr is a terminal.
pub fn reporter() -> Progress {
    let tty = std::io::stderr().is_terminal();
    let multi = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    Arc::new(Reporter {
        multi,
        bars: Mutex::new(HashMap::new()),
    })
}

/// Nothing to flush today; kept so callers mark the end of a pull.
pub fn finish(_p: &Progress) {}
