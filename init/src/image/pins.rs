//! What pulls in progress will record (blob digests and chain IDs): a removal's sweep
//! keeps them, so a pull needs no lock that removals wait for (a pull from a stalled
//! registry would otherwise hold every removal up). Shared by `catalog` (which sweeps) and
//! `pull` (which pins).

use std::collections::HashMap;
use std::sync::Arc;

/// Blobs and layers pulls in progress use, counted per pull.
#[derive(Debug, Default)]
pub struct Pins(std::sync::Mutex<HashMap<String, usize>>);

impl Pins {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One pull's pins, released when it ends (recorded or failed). `default()`: pins no
/// catalog sees (a pull into a bare store).
#[derive(Default)]
pub struct Pinned {
    pins: Arc<Pins>,
    held: Vec<String>,
}

impl Pinned {
    /// A pull's pins in `pins`.
    pub fn on(pins: &Arc<Pins>) -> Pinned {
        Pinned {
            pins: pins.clone(),
            held: Vec::new(),
        }
    }

    /// Pins `digests` (sha256:... or hex) for this pull.
    pub fn pin<'a>(&mut self, digests: impl IntoIterator<Item = &'a str>) {
        let mut m = self.pins.lock();
        for d in digests {
            let hex = d.strip_prefix("sha256:").unwrap_or(d).to_owned();
            *m.entry(hex.clone()).or_insert(0) += 1;
            self.held.push(hex);
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut m = self.pins.lock();
        for h in self.held.drain(..) {
            if let Some(n) = m.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&h);
                }
            }
        }
    }
}
