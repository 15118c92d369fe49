//! The pacing policy of one bucket, as pure arithmetic on a clock reading: a GCRA schedule that
//! reserves future slots, and the adaptation to what Amazon says.
//!
//! - Amazon's `x-amzn-RateLimit-Limit` and a rate set in the config are *ceilings*: the rate
//!   never goes above either, and a header never resets a rate that a 429 lowered.
//! - A 429 means Amazon's bucket is empty although ours was not: someone else (another tool,
//!   another replica without shared state) draws on the same quota. The bucket is emptied and
//!   the rate cut, at most once per [`QUIET`], and never for a request that was sent before
//!   the last cut (it was on its way at the old rate). Between two 429s Amazon's bucket went
//!   from empty to empty, so what we got through in between is the rate left to us: the new
//!   rate is that, less a margin ([`MARGIN`]). Without a measurement (the first 429, or the
//!   last one too long ago to say anything about now) the cut is [`CUT`].
//! - After a cut the rate climbs back slowly, faster the longer no 429 comes
//!   ([`PROBE_LINEAR`], [`PROBE_QUADRATIC`]), so that it finds what is left to us again when the
//!   other caller stops, and keeps testing that nothing more is.
//!
//! The same steps run in Redis as a Lua script (`src/shared/pacing.lua`) when replicas share
//! their buckets; `tests/it/shared.rs` runs one script of events through both and compares.

/// The cut on a 429 when there is nothing to measure yet.
pub const CUT: f64 = 0.7;
/// The share of the measured rate sent after a cut.
pub const MARGIN: f64 = 0.97;
/// After a cut, further 429s within this many seconds change nothing.
pub const QUIET: f64 = 0.25;
/// A measurement over a longer span than this says little about now: the first cut after
/// such a span is [`CUT`].
pub const MEASURED_SPAN: f64 = 30.0;
/// The same for the first 429 of a bucket, measured from its first use.
pub const START_SPAN: f64 = 5.0;
/// Recovery after a cut: this share of the ceiling per second...
pub const PROBE_LINEAR: f64 = 0.002;
/// ...plus this share per second squared.
pub const PROBE_QUADRATIC: f64 = 0.0002;
/// No cut goes below this share of the ceiling.
pub const FLOOR: f64 = 0.02;

/// One bucket's state. Times are seconds on the store's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing {
    /// Theoretical arrival time: the bucket is empty until `tat - burst / rate`.
    pub tat: f64,
    /// The rate after the last cut (the ceiling when never cut).
    pub base: f64,
    /// The rate Amazon reported, or the catalog's until it does; never above `hard_ceiling`.
    pub ceiling: f64,
    /// The rate set in the config, if any: a ceiling Amazon's header cannot lift.
    pub hard_ceiling: Option<f64>,
    /// Bucket size.
    pub burst: f64,
    /// When the rate was last cut.
    pub cut_at: Option<f64>,
    /// Where the current measurement started (the last cut, or the first use) ...
    pub mark_at: f64,
    /// ... and `admitted` then.
    pub mark_admitted: f64,
    /// Requests sent and not answered 429 (reserved minus throttled).
    pub admitted: f64,
    /// Counts reservations, so that only the latest can be given back.
    pub seq: u64,
}

/// Where the rate stands, for `/_proxy/quota`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Requests per second now.
    pub rate: f64,
    /// Whether a 429 holds the rate below the ceiling.
    pub throttled: bool,
    /// Tokens in the bucket now (fractional).
    pub tokens: f64,
}

/// A reserved slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// Seconds from now until the request may go.
    pub wait: f64,
    /// Whole tokens the bucket still holds after this one.
    pub left: u32,
    /// The reservation's number, to give it back ([`Pacing::release`]).
    pub seq: u64,
}

impl Pacing {
    /// A full bucket at `now` with the catalog's or the config's rate and burst; `initial`
    /// tokens in it (the burst for a bucket never used).
    pub fn new(now: f64, rate: f64, burst: u32, hard_ceiling: Option<f64>, initial: f64) -> Pacing {
        let ceiling = hard_ceiling.map_or(rate, |h| h.min(rate));
        let burst = f64::from(burst.max(1));
        let initial = initial.clamp(0.0, burst);
        Pacing {
            tat: now + (burst - initial) / ceiling,
            base: ceiling,
            ceiling,
            hard_ceiling,
            burst,
            cut_at: None,
            mark_at: now,
            // Amazon's bucket is taken to be as full as ours when we start using it: those
            // tokens count as sent before the first measurement.
            mark_admitted: -initial,
            admitted: 0.0,
            seq: 0,
        }
    }

    /// The rate at `now`: the base, climbing back towards the ceiling after a cut.
    pub fn rate(&self, now: f64) -> f64 {
        let Some(cut_at) = self.cut_at else {
            return self.base.min(self.ceiling);
        };
        let t = (now - cut_at).max(0.0);
        let climb = self.ceiling * (PROBE_LINEAR * t + PROBE_QUADRATIC * t * t);
        (self.base + climb).min(self.ceiling)
    }

    /// Tokens in the bucket at `now`.
    pub fn tokens(&self, now: f64) -> f64 {
        let rate = self.rate(now);
        (self.burst - (self.tat - now).max(0.0) * rate).clamp(0.0, self.burst)
    }

    /// Where the rate stands at `now`.
    pub fn reading(&self, now: f64) -> Reading {
        let rate = self.rate(now);
        Reading {
            rate,
            throttled: rate < self.ceiling - 1e-9,
            tokens: self.tokens(now),
        }
    }

    /// Reserves the next slot if it comes within `max_wait` seconds; otherwise changes nothing
    /// and answers how long until the next slot.
    pub fn reserve(&mut self, now: f64, max_wait: f64) -> Result<Slot, f64> {
        let interval = 1.0 / self.rate(now);
        let tat = self.tat.max(now) + interval;
        let wait = ((tat - now) - self.burst * interval).max(0.0);
        // Rounding must not make a free slot look a hair away (x-spapi-max-wait: 0).
        let wait = if wait < 1e-9 { 0.0 } else { wait };
        if wait > max_wait {
            return Err(wait);
        }
        self.tat = tat;
        self.admitted += 1.0;
        self.seq += 1;
        let left = ((self.burst * interval - (tat - now)) / interval).max(0.0);
        Ok(Slot {
            wait,
            left: left as u32,
            seq: self.seq,
        })
    }

    /// Gives a reserved slot back if no later one was reserved after it (a waiter that left,
    /// or one that re-reserves after the rate changed): one interval at today's rate.
    pub fn release(&mut self, now: f64, slot: &Slot) {
        if self.seq == slot.seq {
            self.tat -= 1.0 / self.rate(now);
            self.admitted -= 1.0;
            self.seq -= 1;
        }
    }

    /// Amazon answered 429 at `now` to a request sent `age` seconds earlier.
    pub fn throttled(&mut self, now: f64, age: f64) {
        self.admitted -= 1.0;
        let sent = now - age.max(0.0);
        if self.cut_at.is_some_and(|c| now - c < QUIET || sent < c) {
            return;
        }
        let rate = self.rate(now);
        let span = now - self.mark_at;
        // From the start, the measurement rests on Amazon's bucket having been full then: an
        // assumption that holds for the first seconds, not after a long time alone.
        let limit = if self.cut_at.is_some() {
            MEASURED_SPAN
        } else {
            START_SPAN
        };
        let measured = (QUIET..=limit)
            .contains(&span)
            .then(|| (self.admitted - self.mark_admitted) / span);
        let cut = match measured {
            Some(m) if m.is_finite() && m > 0.0 => (m * MARGIN).min(rate * MARGIN),
            _ => rate * CUT,
        };
        let base = cut.max(rate * CUT * CUT).max(self.ceiling * FLOOR);
        self.base = base;
        self.cut_at = Some(now);
        self.mark_at = now;
        self.mark_admitted = self.admitted;
        // Amazon's bucket is empty: so is ours, and the next slot is one interval away.
        self.tat = self.tat.max(now + self.burst / base);
    }

    /// Amazon reported `rate` at `now`: a new ceiling, not a new rate.
    pub fn observe(&mut self, now: f64, rate: f64) {
        if !(rate.is_finite() && rate > 0.0) {
            return;
        }
        let ceiling = self.hard_ceiling.map_or(rate, |h| h.min(rate));
        if (ceiling - self.ceiling).abs() < 1e-9 {
            return;
        }
        let before = self.rate(now);
        // What the bucket owes (tokens short of full, reservations ahead included) carries
        // over to the new rate.
        let owed = (self.tat - now).max(0.0) * before;
        self.ceiling = ceiling;
        if self.cut_at.is_none() {
            self.base = ceiling;
        } else {
            self.base = self.base.min(ceiling);
        }
        self.tat = now + owed / self.rate(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(rate: f64, burst: u32) -> Pacing {
        Pacing::new(0.0, rate, burst, None, f64::from(burst))
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_paces() {
        let mut p = fresh(2.0, 3);
        let waits: Vec<f64> = (0..6).map(|_| p.reserve(0.0, 60.0).unwrap().wait).collect();
        assert_eq!(waits, [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]);
        // Past max_wait nothing is reserved.
        assert_eq!(p.reserve(0.0, 1.0), Err(2.0));
        assert_eq!(p.reserve(0.0, 2.0).unwrap().wait, 2.0);
    }

    #[test]
    fn left_counts_whole_tokens_after_the_reservation() {
        let mut p = fresh(1.0, 3);
        let left: Vec<u32> = (0..4).map(|_| p.reserve(0.0, 60.0).unwrap().left).collect();
        assert_eq!(left, [2, 1, 0, 0]);
    }

    #[test]
    fn a_released_slot_goes_to_the_next_request() {
        let mut p = fresh(1.0, 1);
        p.reserve(0.0, 60.0).unwrap();
        let slot = p.reserve(0.0, 60.0).unwrap();
        assert_eq!(slot.wait, 1.0);
        p.release(0.0, &slot);
        assert_eq!(p.reserve(0.0, 60.0).unwrap().wait, 1.0);
        // Only the latest reservation can be given back.
        let first = p.reserve(0.0, 60.0).unwrap();
        p.reserve(0.0, 60.0).unwrap();
        p.release(0.0, &first);
        assert_eq!(p.reserve(0.0, 60.0).unwrap().wait, 4.0);
    }

    /// (what happens, at, then the rate at that moment)
    #[test]
    fn adaptation_table() {
        struct Case {
            name: &'static str,
            steps: Vec<(&'static str, f64)>,
            rate_after: f64,
            throttled: bool,
        }
        let cases = [
            Case {
                name: "a header below the rate lowers it",
                steps: vec![("header 1", 0.0)],
                rate_after: 1.0,
                throttled: false,
            },
            Case {
                name: "a header above an unthrottled rate raises it",
                steps: vec![("header 20", 0.0)],
                rate_after: 20.0,
                throttled: false,
            },
            Case {
                name: "a 429 with nothing to measure cuts by CUT",
                steps: vec![("429", 0.1)],
                rate_after: 10.0 * CUT,
                throttled: true,
            },
            Case {
                name: "the first 429 measures from the full bucket at the start",
                // 10 tokens at the start, none sent: 9 over 0.5 s is more than the rate.
                steps: vec![("429", 0.5)],
                rate_after: 10.0 * MARGIN,
                throttled: true,
            },
            Case {
                name: "429s inside QUIET change nothing more",
                steps: vec![("429", 0.1), ("429", 0.3)],
                rate_after: 10.0 * CUT + 10.0 * (PROBE_LINEAR * 0.2 + PROBE_QUADRATIC * 0.04),
                throttled: true,
            },
            Case {
                name: "a 429 to a request sent before the cut changes nothing",
                steps: vec![("429", 0.1), ("429-sent 0.95", 1.0)],
                rate_after: 10.0 * CUT + 10.0 * (PROBE_LINEAR * 0.9 + PROBE_QUADRATIC * 0.81),
                throttled: true,
            },
            Case {
                name: "a second 429 cuts to what got through in between, less MARGIN",
                // 10 slots reserved in the 2 s between the two 429s, one of them throttled.
                steps: vec![("429", 0.1), ("sent 10", 2.1), ("429", 2.1)],
                rate_after: 9.0 / 2.0 * MARGIN,
                throttled: true,
            },
            Case {
                name: "a header never resets a cut rate",
                steps: vec![("429", 0.1), ("header 10", 0.1)],
                rate_after: 10.0 * CUT,
                throttled: true,
            },
            Case {
                name: "the rate climbs back to the ceiling",
                steps: vec![("429", 0.1), ("wait", 60.0)],
                rate_after: 10.0,
                throttled: false,
            },
            Case {
                name: "a lower header lowers a cut rate's ceiling",
                steps: vec![("429", 0.1), ("header 2", 0.2)],
                rate_after: 2.0,
                throttled: false,
            },
        ];
        for case in cases {
            let mut p = fresh(10.0, 10);
            let mut now = 0.0;
            for (what, at) in case.steps {
                now = at;
                match what.split_once(' ') {
                    Some(("header", r)) => p.observe(now, r.parse().unwrap()),
                    Some(("sent", n)) => {
                        for _ in 0..n.parse::<u32>().unwrap() {
                            p.reserve(now, 1e9).unwrap();
                        }
                    }
                    _ if what == "429" => p.throttled(now, 0.0),
                    Some(("429-sent", ago)) => p.throttled(now, ago.parse().unwrap()),
                    _ => {}
                }
            }
            let reading = p.reading(now);
            assert!(
                (reading.rate - case.rate_after).abs() < 1e-6,
                "{}: {} != {}",
                case.name,
                reading.rate,
                case.rate_after
            );
            assert_eq!(reading.throttled, case.throttled, "{}", case.name);
        }
    }

    #[test]
    fn a_slot_reserved_before_a_rate_change_is_given_back_at_the_new_rate() {
        let mut p = fresh(2.0, 1);
        p.reserve(0.0, 60.0).unwrap();
        let slot = p.reserve(0.0, 60.0).unwrap();
        assert_eq!(slot.wait, 0.5);
        p.observe(0.0, 1.0);
        p.release(0.0, &slot);
        assert_eq!(p.reserve(0.0, 60.0).unwrap().wait, 1.0);
    }

    #[test]
    fn a_configured_rate_is_a_ceiling_amazons_header_cannot_lift() {
        let mut p = Pacing::new(0.0, 5.0, 10, Some(2.0), 10.0);
        assert_eq!(p.rate(0.0), 2.0);
        p.observe(0.0, 50.0);
        assert_eq!(p.rate(0.0), 2.0);
        p.observe(0.0, 1.0);
        assert_eq!(p.rate(0.0), 1.0);
    }

    /// Amazon's bucket: 10/s, burst 10; another caller takes 3/s of it. Sending as fast as the
    /// pacing allows for 60 s, the proxy ends up near the 7/s left to it, with few 429s.
    #[test]
    fn it_settles_on_what_another_caller_leaves() {
        let (amazon_rate, amazon_burst, other) = (10.0, 10.0, 3.0);
        let mut amazon_tokens: f64 = amazon_burst;
        let mut p = fresh(10.0, 10);
        let (mut now, mut last) = (0.0, 0.0);
        let (mut sent, mut throttled, mut sent_late) = (0u32, 0u32, 0u32);
        let mut other_next = 0.0;
        while now < 60.0 {
            let slot = p.reserve(now, 60.0).unwrap();
            now += slot.wait + 0.001;
            // Amazon refills and the other caller takes its share up to now.
            amazon_tokens = (amazon_tokens + (now - last) * amazon_rate).min(amazon_burst);
            last = now;
            while other_next <= now {
                if amazon_tokens >= 1.0 {
                    amazon_tokens -= 1.0;
                }
                other_next += 1.0 / other;
            }
            sent += 1;
            if now > 30.0 {
                sent_late += 1;
            }
            if amazon_tokens >= 1.0 {
                amazon_tokens -= 1.0;
            } else {
                throttled += 1;
                p.throttled(now, 0.001);
            }
        }
        let late_rate = f64::from(sent_late) / 30.0;
        assert!(late_rate > 0.95 * 7.0 * 0.97, "{late_rate}/s after 30 s");
        assert!(
            f64::from(throttled) < 0.01 * f64::from(sent) + 3.0,
            "{throttled} of {sent} throttled"
        );
    }
}
