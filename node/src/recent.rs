//! The most recent ids seen, at most `N`: past that the oldest is forgotten first. The
//! router's seen-message cache and the mempool's ids verified in blocks both use it.

use std::collections::{HashSet, VecDeque};

use ledger::Hash;

#[derive(Debug, Default)]
pub struct RecentIds<const N: usize> {
    set: HashSet<Hash>,
    order: VecDeque<Hash>,
}

impl<const N: usize> RecentIds<N> {
    pub fn contains(&self, id: &Hash) -> bool {
        self.set.contains(id)
    }

    /// Remembers `id` (once), forgetting the oldest past `N`.
    pub fn insert(&mut self, id: Hash) {
        if self.set.insert(id) {
            self.order.push_back(id);
            while self.order.len() > N {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_forgotten_first_and_a_repeat_does_not_renew_it() {
        let mut r = RecentIds::<2>::default();
        r.insert([1; 32]);
        r.insert([2; 32]);
        r.insert([1; 32]);
        r.insert([3; 32]);
        assert!(!r.contains(&[1; 32]));
        assert!(r.contains(&[2; 32]) && r.contains(&[3; 32]));
    }
}
