//! The caller's deadline. A gRPC client states how long it will wait in the `grpc-timeout`
//! header; an rpc that waits for a workload to get ready (a VM's vCPUs, a spawned child
//! serving) waits as long as the caller does, not for a window fixed in auraed, so a slow
//! machine needs only a patient caller. The wait ends a little before the caller gives up,
//! so the caller receives auraed's own error (how far the workload got) rather than a bare
//! DEADLINE_EXCEEDED.

use std::time::Duration;
use tonic::metadata::MetadataMap;

pub const HEADER: &str = "grpc-timeout";

/// The caller's timeout, when it sent a well-formed `grpc-timeout`.
pub fn caller_timeout(md: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(md.get(HEADER)?.to_str().ok()?)
}

/// `grpc-timeout`: at most 8 ASCII digits and a unit (H, M, S, m, u, n), per the gRPC
/// over HTTP/2 spec.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What auraed keeps back from a caller's deadline so its answer is on the wire before the
/// caller stops listening: a tenth (at most 2 s), and never less than half the deadline or
/// 100 ms, whichever is smaller, because on a short deadline the transport's own latency
/// (a loaded machine, an emulated NIC) is most of it.
pub fn margin(caller: Duration) -> Duration {
    (caller / 10)
        .min(Duration::from_secs(2))
        .max((caller / 2).min(Duration::from_millis(100)))
}

/// The instant by which a Run* must have answered, when the caller stated a deadline. An
/// answer that is not ready by then is not sent: the handler answers DEADLINE_EXCEEDED
/// itself and the work is undone, so "the caller got its answer" and "the caller went away"
/// never both hold for one call, whatever the machine's speed.
pub fn answer_by(since: std::time::Instant, caller: Option<Duration>) -> Option<std::time::Instant> {
    let c = caller?.min(MAX_WAIT);
    Some(since + c.saturating_sub(margin(c)))
}

/// How long an rpc may wait for its workload to get ready: the limit the request states
/// and the caller's own deadline, whichever is shorter, less the [`margin`] so auraed's
/// answer arrives before the caller stops listening; `default` when neither is given.
pub fn wait_budget(stated: Option<Duration>, caller: Option<Duration>, default: Duration) -> Duration {
    let caller = caller.map(|c| c.saturating_sub(margin(c)));
    let budget = match (stated, caller) {
        (Some(s), Some(c)) => s.min(c),
        (Some(s), None) => s,
        (None, Some(c)) => c,
        (None, None) => default,
    };
    budget.min(MAX_WAIT)
}

/// The ceiling on any such wait, whatever the caller states: a request that waits for a
/// workload holds a task, a stream and what the workload took, and "99999999H" must not
/// hold them for years. 30 minutes is far beyond a nested Spawn under emulation (~10 s).
/// (Wait and a followed Logs are not bounded: they last as long as the workload, and
/// hold only a stream, of which a connection has at most 256 and an address 512.)
pub const MAX_WAIT: Duration = crate::runtime::spec::READY_MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_malformed_values() {
        assert_eq!(parse_grpc_timeout("3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("180S"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "10s", "123456789S", "-1S", "1.5S", "1 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_shorter_limit_wins_and_the_caller_hears_back_before_its_deadline() {
        let s = Duration::from_secs;
        assert_eq!(wait_budget(None, None, s(300)), s(300));
        assert_eq!(wait_budget(Some(s(30)), None, s(300)), s(30));
        assert_eq!(wait_budget(None, Some(s(10)), s(300)), s(9), "a tenth kept back");
        assert_eq!(wait_budget(None, Some(s(600)), s(300)), s(598), "at most 2 s kept back");
        assert_eq!(wait_budget(Some(s(30)), Some(s(600)), s(300)), s(30));
        assert_eq!(wait_budget(Some(s(900)), Some(s(600)), s(300)), s(598));
        let years = parse_grpc_timeout("99999999H");
        assert_eq!(wait_budget(None, years, s(300)), MAX_WAIT, "the ceiling holds");
        assert_eq!(wait_budget(Some(s(1 << 40)), None, s(300)), MAX_WAIT);
    }

    #[test]
    fn a_short_deadline_keeps_back_enough_for_the_answer_to_travel() {
        let ms = Duration::from_millis;
        assert_eq!(margin(ms(300)), ms(100), "at least 100 ms of a 300 ms deadline");
        assert_eq!(margin(ms(50)), ms(25), "half of a deadline under 200 ms");
        assert_eq!(margin(ms(0)), ms(0));
        assert_eq!(margin(ms(10_000)), ms(1000), "a tenth");
        let t0 = std::time::Instant::now();
        assert_eq!(answer_by(t0, None), None, "no deadline stated: no answer-by");
        assert_eq!(answer_by(t0, Some(ms(300))), Some(t0 + ms(200)));
        assert_eq!(answer_by(t0, Some(ms(1))), Some(t0 + Duration::from_micros(500)));
    }

    #[test]
    fn reads_the_header_from_metadata() {
        let mut md = MetadataMap::new();
        assert_eq!(caller_timeout(&md), None);
        md.insert(HEADER, "250m".parse().unwrap());
        assert_eq!(caller_timeout(&md), Some(Duration::from_millis(250)));
    }
}
