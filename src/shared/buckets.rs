//! Buckets in Redis: every step of [`crate::limiter::pacing`] runs as one Lua script
//! (`pacing.lua`), atomically, on Redis's clock, so replicas reserve slots from one schedule and
//! share what a 429 taught any of them. Each replica still queues its own requests and sleeps
//! until its reserved slot.
//!
//! While Redis does not answer, a bucket falls back to a local one with its share of the rate
//! and burst (`1/replicas`), made empty when the outage starts (Amazon's bucket is as the others
//! left it, unknown, so nothing is sent on the strength of a full one). The first step after
//! Redis answers again tells the script so, and it takes Amazon's bucket to be empty too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Redis;
use crate::limiter::pacing::{Reading, Slot};
use crate::limiter::store::{BucketName, BucketStore, MemoryBucket, Pending, Shape, StoredBucket};

/// How long an idle bucket is kept in Redis; after that it starts full again, as Amazon's has.
const IDLE_TTL_SECS: u64 = 600;

/// Slots handed out by the fallback carry this bit, so they are given back where they came from.
const FALLBACK_SEQ: u64 = 1 << 63;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("pacing.lua")));

/// The Lua script's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reserve a slot within the argument's seconds.
    Reserve,
    /// Give back the slot numbered by the argument.
    Release,
    /// A 429 to a request sent the argument's seconds ago.
    Throttled,
    /// Amazon reported the argument's rate.
    Observe,
    /// Only read.
    Read,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Reserve => "reserve",
            Step::Release => "release",
            Step::Throttled => "throttled",
            Step::Observe => "observe",
            Step::Read => "read",
        }
    }
}

/// What the script answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    /// For [`Step::Reserve`]: the slot, or how long until one (seconds).
    pub slot: Option<Result<Slot, f64>>,
    /// Where the bucket stands after the step.
    pub reading: Reading,
}

/// Runs one step of the script on `key`. `now` replaces Redis's clock (tests); `resume` says
/// this replica comes back from its fallback.
#[allow(clippy::too_many_arguments)]
pub async fn step(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    shape: &Shape,
    initial: f64,
    step: Step,
    arg: f64,
    now: Option<f64>,
    resume: bool,
) -> Result<Answer, redis::RedisError> {
    let mut call = SCRIPT.key(key);
    call.arg(step.name())
        .arg(now.map(|n| format!("{n:.17}")).unwrap_or_default())
        .arg(format!("{:.17}", shape.rate))
        .arg(shape.burst)
        .arg(
            shape
                .hard_ceiling
                .map(|h| format!("{h:.17}"))
                .unwrap_or_default(),
        )
        .arg(format!("{initial:.17}"))
        .arg(format!("{arg:.17}"))
        .arg(if resume { "1" } else { "0" })
        .arg(IDLE_TTL_SECS);
    let out: Vec<String> = call.invoke_async(conn).await?;
    parse(step, &out).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "the pacing script answered something else",
        ))
    })
}

fn parse(step: Step, out: &[String]) -> Option<Answer> {
    let [outcome, wait, left, seq, rate, throttled, tokens] = out else {
        return None;
    };
    let num = |s: &String| s.parse::<f64>().ok().filter(|v| v.is_finite());
    let reading = Reading {
        rate: num(rate)?,
        throttled: throttled == "1",
        tokens: num(tokens)?,
    };
    let slot = match (step, outcome.as_str()) {
        (Step::Reserve, "ok") => Some(Ok(Slot {
            wait: num(wait)?,
            left: num(left)?.clamp(0.0, f64::from(u32::MAX)) as u32,
            seq: num(seq)?.clamp(0.0, (FALLBACK_SEQ - 1) as f64) as u64,
        })),
        (Step::Reserve, "late") => Some(Err(num(wait)?)),
        (Step::Reserve, _) => return None,
        _ => None,
    };
    Some(Answer { slot, reading })
}

/// Opens buckets kept in Redis.
#[derive(Debug)]
pub struct RedisStore {
    redis: Arc<Redis>,
    /// The fallbacks' clock.
    epoch: Instant,
}

impl RedisStore {
    /// Buckets in `redis`.
    pub fn new(redis: Arc<Redis>) -> RedisStore {
        RedisStore {
            redis,
            epoch: Instant::now(),
        }
    }
}

impl BucketStore for RedisStore {
    fn open(&self, name: BucketName, shape: Shape) -> Arc<dyn StoredBucket> {
        let share = f64::from(self.redis.replicas.max(1));
        Arc::new(RedisBucket {
            redis: Arc::clone(&self.redis),
            // The shape is part of the name: replicas share a bucket only when they agree on
            // it, and a changed rate in the config starts a new one.
            key: format!(
                "{}bucket:{}:{}/{}/{}",
                super::PREFIX,
                name.path(),
                shape.rate,
                shape.burst,
                shape
                    .hard_ceiling
                    .map_or_else(|| "-".to_string(), |h| h.to_string())
            ),
            shape,
            local_shape: Shape {
                rate: shape.rate / share,
                burst: ((f64::from(shape.burst) / share).floor() as u32).max(1),
                hard_ceiling: shape.hard_ceiling.map(|h| h / share),
            },
            share,
            epoch: self.epoch,
            fallback: Mutex::new(None),
            resume: AtomicBool::new(false),
            last: Mutex::new(Reading {
                rate: shape.hard_ceiling.map_or(shape.rate, |h| h.min(shape.rate)),
                throttled: false,
                tokens: f64::from(shape.burst),
            }),
        })
    }
}

/// One bucket in Redis, with its local fallback.
struct RedisBucket {
    redis: Arc<Redis>,
    key: String,
    shape: Shape,
    /// This replica's share, for the fallback.
    local_shape: Shape,
    share: f64,
    epoch: Instant,
    /// Made empty when an outage starts; dropped when Redis answers again.
    fallback: Mutex<Option<(u64, Arc<MemoryBucket>)>>,
    /// Set while on the fallback: the next step in Redis says so.
    resume: AtomicBool,
    /// The last reading Redis gave.
    last: Mutex<Reading>,
}

impl RedisBucket {
    /// One step in Redis; `None` if Redis is down (or just failed).
    async fn in_redis(&self, step: Step, arg: f64) -> Option<Answer> {
        let mut conn = self.redis.connection().await?;
        let resume = self.resume.load(Ordering::Acquire);
        match self::step(
            &mut conn,
            &self.key,
            &self.shape,
            f64::from(self.shape.burst),
            step,
            arg,
            None,
            resume,
        )
        .await
        {
            Ok(answer) => {
                if resume {
                    self.resume.store(false, Ordering::Release);
                    self.lock_fallback().take();
                }
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = answer.reading;
                Some(answer)
            }
            Err(e) => {
                self.redis.failed(&e);
                None
            }
        }
    }

    fn lock_fallback(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<MemoryBucket>)>> {
        self.fallback.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local bucket, made empty if this outage has none yet.
    fn fallback(&self) -> Arc<MemoryBucket> {
        self.resume.store(true, Ordering::Release);
        let outage = self.redis.outage();
        let mut f = self.lock_fallback();
        if let Some((made_in, b)) = f.as_ref() {
            if *made_in == outage {
                return Arc::clone(b);
            }
        }
        let b = Arc::new(MemoryBucket::new(self.epoch, self.local_shape, 0.0));
        // Amazon's rate as last seen, in this replica's share.
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        b.observe_now(last.rate / self.share);
        *f = Some((outage, Arc::clone(&b)));
        b
    }

    fn current_fallback(&self) -> Option<Arc<MemoryBucket>> {
        self.lock_fallback().as_ref().map(|(_, b)| Arc::clone(b))
    }
}

impl StoredBucket for RedisBucket {
    fn reserve(&self, max_wait: Duration) -> Pending<'_, Result<Slot, Duration>> {
        Box::pin(async move {
            if let Some(a) = self.in_redis(Step::Reserve, max_wait.as_secs_f64()).await {
                if let Some(slot) = a.slot {
                    return slot
                        .map_err(|w| Duration::try_from_secs_f64(w).unwrap_or(Duration::MAX));
                }
            }
            self.fallback().reserve_now(max_wait).map(|mut s| {
                s.seq |= FALLBACK_SEQ;
                s
            })
        })
    }

    fn release(&self, slot: Slot) -> Pending<'_, ()> {
        Box::pin(async move {
            if slot.seq & FALLBACK_SEQ != 0 {
                if let Some(f) = self.current_fallback() {
                    f.release_now(&Slot {
                        seq: slot.seq & !FALLBACK_SEQ,
                        ..slot
                    });
                }
            } else {
                self.in_redis(Step::Release, slot.seq as f64).await;
            }
        })
    }

    fn throttled(&self, age: Duration) -> Pending<'_, ()> {
        Box::pin(async move {
            if self
                .in_redis(Step::Throttled, age.as_secs_f64())
                .await
                .is_none()
            {
                self.fallback().throttled_now(age);
            }
        })
    }

    fn observe(&self, rate: f64) -> Pending<'_, ()> {
        Box::pin(async move {
            if let Some(f) = self.current_fallback() {
                f.observe_now(rate / self.share);
            }
            self.in_redis(Step::Observe, rate).await;
        })
    }

    fn reading(&self) -> Reading {
        match self.current_fallback() {
            Some(f) => f.reading_now(),
            None => *self.last.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_answers_are_read_or_refused() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ok = parse(Step::Reserve, &s(&["ok", "0.5", "2", "7", "2", "0", "2.5"])).unwrap();
        assert_eq!(
            ok.slot,
            Some(Ok(Slot {
                wait: 0.5,
                left: 2,
                seq: 7
            }))
        );
        assert_eq!(ok.reading.rate, 2.0);
        let late = parse(Step::Reserve, &s(&["late", "3", "0", "0", "2", "1", "0"])).unwrap();
        assert_eq!(late.slot, Some(Err(3.0)));
        assert!(late.reading.throttled);
        assert!(parse(Step::Read, &s(&["done", "0", "0", "0", "2", "0", "1"])).is_some());
        // Garbage is refused, never a panic.
        assert!(parse(Step::Reserve, &s(&["ok", "nan", "0", "0", "2", "0", "1"])).is_none());
        assert!(parse(Step::Reserve, &s(&["odd", "0", "0", "0", "2", "0", "1"])).is_none());
        assert!(parse(Step::Read, &s(&["done"])).is_none());
    }
}
