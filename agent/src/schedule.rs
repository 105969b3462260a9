//! When to act on a credential: the timing rules of `docs/leases.md`, as pure functions
//! of the current instant, what Vault granted and a jitter draw.
//!
//! Every rule acts at about two thirds of a lifetime and pulls the moment *earlier* by a
//! random 0-10 % ([`JITTER`]), so that many pods started together spread their requests
//! and no credential is ever acted on after the rule's nominal point.
//!
//! - Static secrets (KV v1 and v2, any read without a lease): [`refresh`] every
//!   interval, except the first re-read after a fetch from nothing, which
//!   [`first_refresh`] places anywhere in the interval, so that pods started together
//!   do not keep refreshing together.
//! - Renewable leases and the agent's token: [`after_grant`] renews at 2/3 of the TTL
//!   just granted. Once a renewal comes back shorter than asked (the max TTL is near), or
//!   for a lease that is not renewable, the next action is to replace the credential
//!   [`lead`] before it expires: a third of its normal TTL, at least [`MIN_LEAD`].
//! - Certificates: [`certificate`] re-issues at 2/3 of the validity.
//! - A replaced credential is revoked after [`replaced_grace`], so an app that read the
//!   old file just before the switch still connects.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Largest fraction by which a scheduled moment is pulled earlier.
pub const JITTER: f64 = 0.10;
/// Shortest time between replacing a credential and its expiry; only matters for TTLs
/// under 6 s, where a third of the TTL would leave the app too little time to switch.
pub const MIN_LEAD: Duration = Duration::from_secs(2);
/// A renewal granting this much less than asked is capped by a max TTL. Vault counts
/// whole seconds, so a grant made a moment after the ask can be a second short.
pub const CAP_TOLERANCE: Duration = Duration::from_secs(1);
/// Longest wait between replacing a credential and revoking the old one.
pub const MAX_REPLACED_GRACE: Duration = Duration::from_secs(30);
/// An old credential with less than this left is not revoked: it expires on its own
/// before a revocation would matter.
pub const MIN_WORTH_REVOKING: Duration = Duration::from_secs(2);

/// What to do with a credential at its next due moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read a static secret again.
    Refresh,
    /// Extend the lease (or token) in place.
    Renew,
    /// Replace it: a new credential (or a new login for the token).
    Reissue,
}

/// A random jitter draw in `[0, JITTER)`.
pub fn jitter() -> f64 {
    rand::random_range(0.0..JITTER)
}

/// Next step for a static secret read at `now`.
pub fn refresh(now: Instant, interval: Duration, jitter: f64) -> (Action, Instant) {
    (Action::Refresh, now + interval.mul_f64(1.0 - jitter))
}

/// A uniform draw in `[0, 1)` for [`first_refresh`].
pub fn spread() -> f64 {
    rand::random_range(0.0..1.0)
}

/// First re-read of a static secret first read at `now`, with a [`spread`] draw: at
/// `interval * (1 - spread)`, so anywhere in `(0, interval]`.
///
/// Later refreshes follow at about one interval each, so this first offset is the
/// pod's phase for good. A 0-10 % jitter would leave pods started together (a rollout)
/// refreshing within a tenth of an interval of each other forever; only a draw over the
/// whole interval makes their phases, and so Vault's load, even. The cost is at most
/// one early read per source and pod.
pub fn first_refresh(now: Instant, interval: Duration, spread: f64) -> (Action, Instant) {
    refresh(now, interval, spread)
}

/// How long before expiry a credential whose normal TTL is `ttl` is replaced.
pub fn lead(ttl: Duration) -> Duration {
    (ttl / 3).max(MIN_LEAD)
}

/// Next step for a lease or token that Vault just granted `granted` at `now`, after the
/// agent asked for `asked` (its TTL at issue: a renewal asks for that again).
pub fn after_grant(
    now: Instant,
    asked: Duration,
    granted: Duration,
    renewable: bool,
    jitter: f64,
) -> (Action, Instant) {
    // Vault reports TTLs in whole seconds rounded up, so up to CAP_TOLERANCE of what it
    // says is left may already be gone. Every moment below keeps MIN_LEAD of *real*
    // validity: a renewal that turns out capped must still leave time to replace.
    let floor = MIN_LEAD + CAP_TOLERANCE;
    let capped = granted + CAP_TOLERANCE < asked;
    if renewable && !capped {
        let renew_in = granted
            .mul_f64(2.0 / 3.0)
            .min(granted.saturating_sub(floor))
            .mul_f64(1.0 - jitter);
        return (Action::Renew, now + renew_in);
    }
    let lead = lead(asked).mul_f64(1.0 + jitter).max(floor);
    (Action::Reissue, now + granted.saturating_sub(lead))
}

/// Next step for a certificate valid for `lifetime` from `now`.
pub fn certificate(now: Instant, lifetime: Duration, jitter: f64) -> (Action, Instant) {
    (
        Action::Reissue,
        now + lifetime.mul_f64(2.0 / 3.0 * (1.0 - jitter)),
    )
}

/// How long to keep a replaced credential with `remaining` validity before revoking
/// it; `None` when it expires too soon for a revocation to matter.
pub fn replaced_grace(remaining: Duration) -> Option<Duration> {
    (remaining >= MIN_WORTH_REVOKING).then(|| (remaining / 2).min(MAX_REPLACED_GRACE))
}

/// Capped, jittered exponential backoff: 250 ms doubling to 10 s, each wait ±20 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        // Jitter spreads the retries of many pods restarted together.
        base.mul_f64(rand::random_range(0.8..=1.2))
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch of a monotonic instant, for the state file (an
/// `Instant` means nothing to another process).
pub fn to_wall(at: Instant) -> u64 {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = Instant::now();
    let wall = if at >= now {
        now_wall + (at - now)
    } else {
        now_wall.saturating_sub(now - at)
    };
    u64::try_from(wall.as_millis()).unwrap_or(u64::MAX)
}

/// The monotonic instant of a wall-clock time written by [`to_wall`].
pub fn from_wall(millis: u64) -> Instant {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_millis(millis);
    let now = Instant::now();
    if at >= now_wall {
        now + (at - now_wall)
    } else {
        now.checked_sub(now_wall - at).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_renewable_lease_is_renewed_at_two_thirds_pulled_earlier_by_the_jitter() {
        let now = Instant::now();
        assert_eq!(
            after_grant(now, S(30), S(30), true, 0.0),
            (Action::Renew, now + S(20))
        );
        let (action, at) = after_grant(now, S(30), S(30), true, 0.1);
        assert_eq!(action, Action::Renew);
        assert_eq!(at, now + S(18));
    }

    #[test]
    fn a_capped_renewal_leads_to_a_replacement_a_third_of_the_ttl_before_expiry() {
        let now = Instant::now();
        // Asked 30 s, got 25 s: the max TTL is 25 s away; replace at 25 - 10.
        assert_eq!(
            after_grant(now, S(30), S(25), true, 0.0),
            (Action::Reissue, now + S(15))
        );
        // One second short is rounding, not a cap.
        assert_eq!(after_grant(now, S(30), S(29), true, 0.0).0, Action::Renew);
        // Less left than the lead: replace at once.
        assert_eq!(
            after_grant(now, S(30), S(4), true, 0.05),
            (Action::Reissue, now)
        );
    }

    #[test]
    fn a_non_renewable_lease_is_replaced_at_two_thirds() {
        let now = Instant::now();
        assert_eq!(
            after_grant(now, S(30), S(30), false, 0.0),
            (Action::Reissue, now + S(20))
        );
        // Tiny TTLs keep the minimum lead plus Vault's rounding: replace at once.
        assert_eq!(
            after_grant(now, S(3), S(3), false, 0.0),
            (Action::Reissue, now)
        );
    }

    #[test]
    fn a_short_grant_is_renewed_early_enough_to_replace_it_if_the_renewal_is_capped() {
        // Seen under load: asked 6 s, granted 5 s (rounded up from about 4.4 s). Renewing
        // at 2/3 of 5 s left about 1 s for the replacement; the renewal must come while
        // MIN_LEAD of real validity would remain after Vault's rounding.
        let now = Instant::now();
        let (action, at) = after_grant(now, S(6), S(5), true, 0.0);
        assert_eq!(action, Action::Renew);
        assert!(
            at <= now + S(5) - MIN_LEAD - CAP_TOLERANCE,
            "{:?}",
            at - now
        );
        // A long grant is unaffected: still two thirds.
        assert_eq!(
            after_grant(now, S(3600), S(3600), true, 0.0).1,
            now + S(2400)
        );
    }

    #[test]
    fn certificates_and_static_secrets_follow_their_own_clock() {
        let now = Instant::now();
        assert_eq!(
            certificate(now, S(3600), 0.0),
            (Action::Reissue, now + S(2400))
        );
        assert_eq!(refresh(now, S(10), 0.1), (Action::Refresh, now + S(9)));
    }

    #[test]
    fn the_first_refresh_falls_anywhere_in_one_interval_and_never_at_once() {
        let now = Instant::now();
        assert_eq!(
            first_refresh(now, S(60), 0.0),
            (Action::Refresh, now + S(60))
        );
        assert_eq!(
            first_refresh(now, S(60), 0.75),
            (Action::Refresh, now + S(15))
        );
        let (_, at) = first_refresh(now, S(60), 0.999_999);
        assert!(
            at > now && at < now + Duration::from_millis(1),
            "{:?}",
            at - now
        );
    }

    #[test]
    fn first_refreshes_of_many_pods_cover_every_tenth_of_the_interval() {
        // 1,000 pods started at the same instant: each tenth of the interval gets some
        // of their first refreshes (a 0-10 % jitter would put them all in the last
        // tenth). The chance that a fair draw leaves a tenth empty is about 1e-44.
        let now = Instant::now();
        let interval = S(100);
        let mut tenths = [0usize; 10];
        for _ in 0..1000 {
            let (_, at) = first_refresh(now, interval, spread());
            let offset = at - now;
            assert!(offset > Duration::ZERO && offset <= interval, "{offset:?}");
            let tenth = ((offset.as_secs_f64() / 10.0) as usize).min(9);
            tenths[tenth] += 1;
        }
        assert!(tenths.iter().all(|&n| n > 0), "{tenths:?}");
    }

    #[test]
    fn jitter_draws_stay_within_bounds_and_vary() {
        let draws: Vec<f64> = (0..200).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..JITTER).contains(j)));
        let min = draws.iter().copied().fold(f64::MAX, f64::min);
        let max = draws.iter().copied().fold(f64::MIN, f64::max);
        assert!(max - min > JITTER / 2.0, "{min}..{max}");
    }

    #[test]
    fn replaced_credentials_get_half_their_remaining_time_up_to_a_cap() {
        assert_eq!(replaced_grace(S(1)), None);
        assert_eq!(replaced_grace(S(6)), Some(S(3)));
        assert_eq!(replaced_grace(S(3600)), Some(MAX_REPLACED_GRACE));
    }

    #[test]
    fn wall_clock_round_trips_within_a_millisecond() {
        let now = Instant::now();
        for at in [now + S(90), now, now.checked_sub(S(5)).unwrap_or(now)] {
            let back = from_wall(to_wall(at));
            let diff = if back > at { back - at } else { at - back };
            assert!(diff < Duration::from_millis(5), "{diff:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new();
        let mut base = Backoff::FIRST;
        for _ in 0..12 {
            let wait = b.next_wait();
            assert!(
                wait >= base.mul_f64(0.8) && wait <= base.mul_f64(1.2),
                "{wait:?} vs {base:?}"
            );
            base = (base * 2).min(Backoff::MAX);
        }
        b.reset();
        assert!(b.next_wait() <= Backoff::FIRST.mul_f64(1.2));
    }
}
