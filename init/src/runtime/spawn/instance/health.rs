//! A served child is probed for as long as it runs: a child whose kernel panicked, whose
//! VMM is stopped or whose auraed hangs keeps its VMM process alive, so only asking it
//! shows that it is gone. `MISSES` health checks in a row without a SERVING answer within
//! `every`, `every` apart (`aurae.child_check`, 10 s by default), and the child is
//! declared unresponsive: it is killed, and the instance (and a pod on it) fails saying
//! so. Detection takes at most `MISSES × 2 × every` (60 s by default) after the child
//! stops answering.

use super::Instance;
use crate::runtime::launcher::ChildLink;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);
pub const MISSES: u32 = 3;

/// Probes `inst`'s child until it ends, is asked to stop, or stops answering (then kills
/// it, its reason recorded first).
pub(super) async fn watch(inst: Weak<Instance>, children: Arc<dyn ChildLink>, every: Duration) {
    let mut missed = 0u32;
    loop {
        tokio::time::sleep(every).await;
        let Some(i) = inst.upgrade() else { return };
        if i.body.ended() || i.stop_requested.load(Ordering::Relaxed) {
            return;
        }
        let answer = children.probe(&i.channel, every).await;
        // It may have ended or been asked to stop while the probe waited.
        if i.body.ended() || i.stop_requested.load(Ordering::Relaxed) {
            return;
        }
        match answer {
            Ok(()) => missed = 0,
            Err(why) => {
                missed += 1;
                tracing::warn!("instance {}: health check {missed} of {MISSES} missed: {why}", i.name);
                if missed >= MISSES {
                    let said = format!(
                        "the child stopped answering: {MISSES} health checks in a row, {} s apart, got no SERVING answer within {} s (the last: {why}); it was killed",
                        every.as_secs(),
                        every.as_secs()
                    );
                    tracing::warn!("instance {}: {said}", i.name);
                    if let Ok(mut u) = i.unresponsive.lock() {
                        *u = Some(said);
                    }
                    i.kill().await;
                    return;
                }
            }
        }
    }
}
