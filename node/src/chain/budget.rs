//! How many transactions a proposal may carry and still be validated in its round.
//!
//! A validator prevotes for a proposal only once it has executed it, and prevotes nil when
//! the round's propose timeout comes first. Under a backlog the pool holds more than a
//! block's worth, so a proposer that reaps up to the genesis `block_max_txs` proposes a
//! block the others cannot validate in time on a busy machine: the round fails, the next
//! proposer reaps as much, and the height takes rounds until the timeouts have grown
//! enough (a bench run on the 2-core box: one height took five rounds and 30 s, ending in
//! a block of 10,000 txs). So the proposer takes no more than the others can validate in
//! [`VALIDATION_SHARE`] of the round's propose timeout, at the cost per tx this node saw
//! validating the others' recent proposals. The timeout grows with the round, and the cap
//! with it, so a height still ends; a node that has measured nothing yet takes the full
//! `block_max_txs`.

use std::time::Duration;

/// The share of a round's propose timeout a proposal's validation may take. The rest is
/// for building it (about as long, without the signature checks) and for the network.
pub const VALIDATION_SHARE: f64 = 0.35;
/// The fewest txs the cap allows, so a slow measurement never starves the chain.
pub const MIN_TXS: usize = 256;
/// Smaller blocks say little about the cost per tx (their fixed costs dominate).
const MIN_SAMPLE_TXS: usize = 200;
/// Weight of the newest sample in the running mean: a machine that slows down shows at
/// once, one that speeds up within a few blocks.
const NEW_SAMPLE_WEIGHT: f64 = 0.5;

/// The recent wall time per tx of validating others' proposals.
#[derive(Debug, Default)]
pub struct ExecBudget {
    per_tx: Option<Duration>,
}

impl ExecBudget {
    /// Records that validating a proposed block of `txs` txs took `elapsed`.
    pub fn observe(&mut self, txs: usize, elapsed: Duration) {
        if txs < MIN_SAMPLE_TXS {
            return;
        }
        let sample = elapsed.as_secs_f64() / txs as f64;
        let mean = match self.per_tx {
            None => sample,
            Some(p) => (1.0 - NEW_SAMPLE_WEIGHT) * p.as_secs_f64() + NEW_SAMPLE_WEIGHT * sample,
        };
        self.per_tx = Duration::try_from_secs_f64(mean).ok();
    }

    /// The most txs for a proposal in a round whose propose timeout is `timeout`, and at
    /// most `max` (the genesis `block_max_txs`).
    pub fn max_txs(&self, timeout: Duration, max: usize) -> usize {
        let Some(per_tx) = self.per_tx.filter(|p| !p.is_zero()) else {
            return max;
        };
        let fit = timeout.as_secs_f64() * VALIDATION_SHARE / per_tx.as_secs_f64();
        (fit.round() as usize).clamp(MIN_TXS.min(max), max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn unmeasured_or_fast_validation_leaves_the_genesis_maximum() {
        let mut b = ExecBudget::default();
        assert_eq!(b.max_txs(MS(2_000), 10_000), 10_000, "nothing measured");
        // 30 µs a tx (a quiet machine): 700 ms fit 23,333 txs.
        b.observe(1_000, MS(30));
        assert_eq!(b.max_txs(MS(2_000), 10_000), 10_000);
        // A small block says nothing.
        b.observe(10, MS(1_000));
        assert_eq!(b.max_txs(MS(2_000), 10_000), 10_000);
    }

    /// The stall seen in the bench: validation at ~500 µs a tx on a starved machine. The
    /// cap keeps round 0's proposal to what fits 35% of 2 s, and grows with the round's
    /// timeout, so later rounds may carry more.
    #[test]
    fn a_slow_validator_caps_the_proposal_to_what_fits_the_round() {
        let mut b = ExecBudget::default();
        b.observe(2_000, MS(1_000));
        assert_eq!(b.max_txs(MS(2_000), 10_000), 1_400);
        assert_eq!(
            b.max_txs(MS(4_000), 10_000),
            2_800,
            "round 4: 2 s + 4 x 0.5 s"
        );
        // Very slow: never below the floor, never above the genesis maximum.
        b.observe(1_000, Duration::from_secs(100));
        assert_eq!(b.max_txs(MS(2_000), 10_000), MIN_TXS);
        assert_eq!(b.max_txs(MS(2_000), 100), 100);
    }

    #[test]
    fn the_mean_follows_a_machine_that_speeds_up_again() {
        let mut b = ExecBudget::default();
        b.observe(2_000, MS(1_000));
        for _ in 0..8 {
            b.observe(2_000, MS(60));
        }
        assert_eq!(b.max_txs(MS(2_000), 10_000), 10_000);
    }
}
