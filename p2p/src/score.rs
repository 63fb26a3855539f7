//! Application score per peer: penalties subtract points, the score decays exponentially
//! toward zero with a half-life, and a peer below the ban threshold is banned for a while.
//! The same per IP ([`IpScores`]): the sum of the penalties of every peer seen from it.
//! Also the per-peer token buckets that bound gossip and request rates.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::{addrs::IpKey, PeerId, PenaltyReason};

fn decay(score: f64, since: Instant, now: Instant, half_life: Duration) -> f64 {
    let dt = now.saturating_duration_since(since).as_secs_f64();
    score * 0.5f64.powf(dt / half_life.as_secs_f64())
}

/// A NaN or negative "penalty" from a caller must not raise a score.
fn sane_points(points: f64) -> f64 {
    if points.is_finite() {
        points.max(0.0)
    } else {
        0.0
    }
}

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
        decay(s.score, s.updated, now, self.half_life)
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
        let points = sane_points(points);
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
        let half_life = self.half_life;
        for (peer, s) in self.peers.iter_mut() {
            if s.banned_until.is_some_and(|u| u <= now) {
                s.banned_until = None;
                let current = decay(s.score, s.updated, now, half_life);
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
            let current = decay(s.score, s.updated, now, half_life);
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

/// The decaying penalty of one IP (an IPv4 address or an IPv6 /64): the sum of the
/// penalties of every peer id seen from it. Bans and rate buckets per peer id cost an
/// attacker nothing, since a fresh key is free; an IP is not.
#[derive(Debug, Clone)]
struct IpScore {
    score: f64,
    updated: Instant,
    banned_until: Option<Instant>,
}

pub struct IpScores {
    ips: HashMap<IpKey, IpScore>,
    half_life: Duration,
    ban_threshold: f64,
    ban_duration: Duration,
    max_tracked: usize,
}

impl IpScores {
    pub fn new(half_life: Duration, ban_threshold: f64, ban_duration: Duration) -> Self {
        IpScores {
            ips: HashMap::new(),
            half_life,
            ban_threshold,
            ban_duration,
            max_tracked: 10_000,
        }
    }

    /// Current (decayed) score, 0 for an unknown IP.
    pub fn score(&self, ip: &IpKey, now: Instant) -> f64 {
        self.ips
            .get(ip)
            .map_or(0.0, |s| decay(s.score, s.updated, now, self.half_life))
    }

    /// Charge `points` to `ip`; `Some(until)` when this crossed the ban threshold.
    pub fn penalize(&mut self, ip: IpKey, points: f64, now: Instant) -> Option<Instant> {
        let points = sane_points(points);
        if points == 0.0 {
            return None;
        }
        if !self.ips.contains_key(&ip) && self.ips.len() >= self.max_tracked {
            self.evict_one(now);
        }
        let current = self.score(&ip, now);
        let entry = self.ips.entry(ip).or_insert(IpScore {
            score: 0.0,
            updated: now,
            banned_until: None,
        });
        entry.score = current - points;
        entry.updated = now;
        let already_banned = entry.banned_until.is_some_and(|u| u > now);
        if entry.score < self.ban_threshold && !already_banned {
            let until = now + self.ban_duration;
            entry.banned_until = Some(until);
            return Some(until);
        }
        None
    }

    /// Lift expired bans; as for peers, the IP comes back on probation at half the
    /// threshold.
    pub fn expire_bans(&mut self, now: Instant) -> Vec<IpKey> {
        let probation = self.ban_threshold / 2.0;
        let mut lifted = Vec::new();
        for (ip, s) in self.ips.iter_mut() {
            if s.banned_until.is_some_and(|u| u <= now) {
                s.banned_until = None;
                s.score = decay(s.score, s.updated, now, self.half_life).max(probation);
                s.updated = now;
                lifted.push(*ip);
            }
        }
        lifted
    }

    /// IPs banned now.
    pub fn banned(&self, now: Instant) -> usize {
        self.ips
            .values()
            .filter(|s| s.banned_until.is_some_and(|u| u > now))
            .count()
    }

    /// Forget IPs whose penalty has decayed away (bounded memory).
    pub fn prune(&mut self, now: Instant) {
        let half_life = self.half_life;
        self.ips.retain(|_, s| {
            s.banned_until.is_some() || decay(s.score, s.updated, now, half_life) < -0.5
        });
    }

    fn evict_one(&mut self, now: Instant) {
        // The unbanned IP closest to neutral carries the least information.
        let victim = self
            .ips
            .iter()
            .filter(|(_, s)| s.banned_until.is_none_or(|u| u <= now))
            .min_by(|a, b| {
                let sa = -decay(a.1.score, a.1.updated, now, self.half_life);
                let sb = -decay(b.1.score, b.1.updated, now, self.half_life);
                sa.total_cmp(&sb)
            })
            .map(|(ip, _)| *ip);
        if let Some(v) = victim {
            self.ips.remove(&v);
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

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
    }

    /// Take one token; false if the bucket is empty.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(1.0, now)
    }

    /// Whether `n` tokens could be taken now (see [`TokenBucket::try_take_n`]).
    pub fn allows(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        // More than a whole burst is allowed once the bucket is full, and leaves it in
        // debt: the long-run rate still holds.
        self.tokens >= n.min(self.rate)
    }

    /// Take `n` tokens (a batch of `n` txs, a message of `n` bytes); false, taking
    /// nothing, if the bucket does not hold them.
    pub fn try_take_n(&mut self, n: f64, now: Instant) -> bool {
        if self.allows(n, now) {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Take `n` tokens whether or not they are there (after [`TokenBucket::allows`]).
    pub fn take(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// Refilled to its burst: nothing to remember about the peer.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate
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
    fn ip_score_sums_peers_and_bans() {
        let t0 = Instant::now();
        let mut s = IpScores::new(Duration::from_secs(600), -300.0, Duration::from_secs(5));
        let ip = IpKey::of("127.0.11.9".parse().unwrap());
        let other = IpKey::of("127.0.11.2".parse().unwrap());
        // Six fresh identities from one IP, one invalid signature each (50 points).
        for _ in 0..6 {
            assert_eq!(s.penalize(ip, 50.0, t0), None);
        }
        assert!(s.penalize(ip, 50.0, t0).is_some());
        assert_eq!(s.banned(t0), 1);
        assert_eq!(s.score(&other, t0), 0.0);
        assert_eq!(s.penalize(ip, f64::NAN, t0), None);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(s.expire_bans(t1), vec![ip]);
        assert!(s.score(&ip, t1) >= -150.0 - 1e-9);
        // On probation: half the damage bans it again.
        assert!(s.penalize(ip, 160.0, t1).is_some());
    }

    #[test]
    fn bucket_counts_batches() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2048, t0);
        assert!(b.try_take_n(1024.0, t0));
        assert!(b.try_take_n(1024.0, t0));
        assert!(!b.try_take_n(1024.0, t0));
        assert!(!b.try_take_n(1.0, t0));
        // Half a second refills one batch.
        assert!(b.try_take_n(1024.0, t0 + Duration::from_millis(500)));
        // A message larger than the burst passes only on a full bucket, and leaves a debt.
        let mut b = TokenBucket::new(100, t0);
        assert!(b.try_take_n(250.0, t0));
        assert!(!b.try_take(t0 + Duration::from_secs(1)));
        assert!(b.try_take(t0 + Duration::from_millis(1600)));
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
