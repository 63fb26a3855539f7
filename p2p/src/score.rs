//! Application score per peer: penalties subtract points, the score decays exponentially
//! toward zero with a half-life, and a peer below the ban threshold is banned for a while.
//! Also the per-peer token buckets that bound gossip and request rates.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::{PeerId, PenaltyReason};

#[derive(Debug, Clone)]
pub struct PeerScore {
    score: f64,
    updated: Instant,
    pub reasons: BTreeMap<PenaltyReason, u64>,
    pub banned_until: Option<Instant>,
    /// The latest penalty's reason; cleared when a ban is served.
    pub last_reason: Option<PenaltyReason>,
}

/// What a penalty led to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Scored(f64),
    /// The peer just crossed the ban threshold.
    Ban {
        score: f64,
        until: Instant,
    },
}

pub struct Scores {
    peers: HashMap<PeerId, PeerScore>,
    half_life: Duration,
    ban_threshold: f64,
    ban_duration: Duration,
    max_tracked: usize,
}

impl Scores {
    pub fn new(half_life: Duration, ban_threshold: f64, ban_duration: Duration) -> Self {
        Scores {
            peers: HashMap::new(),
            half_life,
            ban_threshold,
            ban_duration,
            max_tracked: 10_000,
        }
    }

    fn decayed(&self, s: &PeerScore, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(s.updated).as_secs_f64();
        s.score * 0.5f64.powf(dt / self.half_life.as_secs_f64())
    }

    /// Current (decayed) score, 0 for an unknown peer.
    pub fn score(&self, peer: &PeerId, now: Instant) -> f64 {
        self.peers.get(peer).map_or(0.0, |s| self.decayed(s, now))
    }

    pub fn get(&self, peer: &PeerId) -> Option<&PeerScore> {
        self.peers.get(peer)
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers
            .get(peer)
            .and_then(|s| s.banned_until)
            .is_some_and(|until| until > now)
    }

    pub fn penalize(
        &mut self,
        peer: PeerId,
        reason: PenaltyReason,
        points: f64,
        now: Instant,
    ) -> Outcome {
        // A NaN or negative "penalty" from a caller must not raise the score.
        let points = if points.is_finite() {
            points.max(0.0)
        } else {
            0.0
        };
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_tracked {
            self.evict_one(now);
        }
        let current = self.score(&peer, now);
        let entry = self.peers.entry(peer).or_insert_with(|| PeerScore {
            score: 0.0,
            updated: now,
            reasons: BTreeMap::new(),
            banned_until: None,
            last_reason: None,
        });
        entry.score = current - points;
        entry.updated = now;
        *entry.reasons.entry(reason).or_insert(0) += 1;
        entry.last_reason = Some(reason);
        let already_banned = entry.banned_until.is_some_and(|u| u > now);
        if entry.score < self.ban_threshold && !already_banned {
            let until = now + self.ban_duration;
            entry.banned_until = Some(until);
            return Outcome::Ban {
                score: entry.score,
                until,
            };
        }
        Outcome::Scored(entry.score)
    }

    /// Lift expired bans. The peer comes back on probation: its score is set to half the
    /// ban threshold (unless it already decayed above that), so a repeat offence bans it
    /// again quickly while an honest peer recovers as the score decays.
    pub fn expire_bans(&mut self, now: Instant) -> Vec<PeerId> {
        let mut lifted = Vec::new();
        let probation = self.ban_threshold / 2.0;
        let half_life = self.half_life.as_secs_f64();
        for (peer, s) in self.peers.iter_mut() {
            if s.banned_until.is_some_and(|u| u <= now) {
                s.banned_until = None;
                let dt = now.saturating_duration_since(s.updated).as_secs_f64();
                let current = s.score * 0.5f64.powf(dt / half_life);
                s.score = current.max(probation);
                s.updated = now;
                // Served: a graylisted peer is only banned again for a new offence.
                s.last_reason = None;
                lifted.push(*peer);
            }
        }
        lifted
    }

    /// Forget peers that are neither banned nor scored any more (bounded memory).
    pub fn prune(&mut self, now: Instant, keep: impl Fn(&PeerId) -> bool) {
        let half_life = self.half_life;
        self.peers.retain(|peer, s| {
            let dt = now.saturating_duration_since(s.updated).as_secs_f64();
            let current = s.score * 0.5f64.powf(dt / half_life.as_secs_f64());
            keep(peer) || s.banned_until.is_some() || current < -0.5
        });
    }

    fn evict_one(&mut self, now: Instant) {
        // Drop the unbanned peer closest to neutral: it carries the least information.
        let victim = self
            .peers
            .iter()
            .filter(|(_, s)| s.banned_until.is_none_or(|u| u <= now))
            .min_by(|a, b| {
                let sa = -self.decayed(a.1, now);
                let sb = -self.decayed(b.1, now);
                sa.total_cmp(&sb)
            })
            .map(|(p, _)| *p);
        if let Some(v) = victim {
            self.peers.remove(&v);
        }
    }
}

/// Token bucket: `rate` tokens per second, burst of one second's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(rate),
            rate: f64::from(rate),
            last: now,
        }
    }

    /// Take one token; false if the bucket is empty.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_ban_and_probation() {
        let t0 = Instant::now();
        let mut s = Scores::new(Duration::from_secs(10), -100.0, Duration::from_secs(5));
        let p = PeerId::random();
        assert_eq!(
            s.penalize(p, PenaltyReason::Undecodable, 60.0, t0),
            Outcome::Scored(-60.0)
        );
        // One half-life later the score halved.
        let t1 = t0 + Duration::from_secs(10);
        assert!((s.score(&p, t1) + 30.0).abs() < 1e-9);
        assert!(matches!(
            s.penalize(p, PenaltyReason::InvalidBlock, 80.0, t1),
            Outcome::Ban { .. }
        ));
        assert!(s.is_banned(&p, t1));
        // Further penalties while banned do not re-ban.
        assert!(matches!(
            s.penalize(p, PenaltyReason::InvalidBlock, 1.0, t1),
            Outcome::Scored(_)
        ));
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(s.expire_bans(t2), vec![p]);
        assert!(!s.is_banned(&p, t2));
        assert!(s.score(&p, t2) >= -50.0 - 1e-9);
        assert_eq!(s.get(&p).map(|x| x.reasons.len()), Some(2));
        // NaN or negative points never raise the score.
        let before = s.score(&p, t2);
        s.penalize(p, PenaltyReason::Undecodable, f64::NAN, t2);
        s.penalize(p, PenaltyReason::Undecodable, -1000.0, t2);
        assert!(s.score(&p, t2) <= before);
    }

    #[test]
    fn bucket_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
    }
}
