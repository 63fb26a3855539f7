//! The wallet's light client: trust the genesis file, not the node, and follow the
//! validator set from genesis to the height asked for (CometBFT's light client, "skipping"
//! verification, without a trusting period).
//!
//! The trusted state is a height `h` with the set of `h + 1` (at the start: height 0 and
//! the genesis set). To verify height `H`, the client fetches header `H` with its commit
//! and:
//! - `H = h + 1` (adjacent): the header must name the trusted set (`validators_hash`)
//!   and carry > 2/3 of its power;
//! - `H > h + 1` (a skip): the set of `H` the node sends must hash to the header's
//!   `validators_hash` and carry > 2/3 of it, and the commit must also carry > 1/3 of the
//!   trusted set's power (so at least one validator the client already trusts vouches for
//!   it). Without that third, it bisects: it verifies the header halfway first and tries
//!   again from there; the recursion ends at worst at adjacent headers.
//!
//! Once `H` is verified, the set of `H + 1` the node sends must hash to the header's
//! `next_validators_hash` before it is trusted. Every answer of the node is untrusted: a
//! set whose hash does not match, a commit with too little power or a bad signature, or a
//! header that is not the one the commit signs is a [`LightError`] naming the height.
//!
//! On protocol 1 the genesis set is the set of every height, so one commit by it verifies
//! any height directly and no set is fetched.

use std::fmt;
use std::future::Future;

use ledger::crypto::verify;
use ledger::hash::Hash;
use ledger::types::{Commit, Header, Vote, VoteKind, PROTOCOL_2};
use ledger::validators::ValidatorSet;

/// A header with the commit that finalised it, as the node sent them (untrusted).
#[derive(Clone, Debug)]
pub struct SignedHeader {
    pub header: Header,
    pub commit: Commit,
}

/// Where the client reads the chain from: the node's RPC, or a table in tests. Nothing it
/// answers is trusted. An `Err` is a transport or decoding failure, said in a sentence.
pub trait Source {
    /// The header of `height` and the commit for it.
    fn signed_header(&mut self, height: u64) -> impl Future<Output = Result<SignedHeader, String>>;
    /// The validator set that runs `height`.
    fn validator_set(&mut self, height: u64) -> impl Future<Output = Result<ValidatorSet, String>>;
}

/// Why verification of a height failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LightError {
    pub height: u64,
    pub reason: String,
}

impl fmt::Display for LightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "height {}: {}", self.height, self.reason)
    }
}

impl std::error::Error for LightError {}

fn fail(height: u64, reason: impl Into<String>) -> LightError {
    LightError {
        height,
        reason: reason.into(),
    }
}

/// What the client did to reach its trusted height.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Headers verified (each fetched with its commit and checked).
    pub headers: usize,
    /// Of these, verified by skipping ahead (> 1/3 of a trusted set) rather than adjacent.
    pub skips: usize,
    /// Times a skip lacked 1/3 of the trusted power and a header halfway was verified first.
    pub bisections: usize,
    /// Validator sets fetched from the node (each checked against a verified header).
    pub sets_fetched: usize,
}

pub struct LightClient {
    chain_id: String,
    protocol: u32,
    /// The last verified height (0: genesis) and its header (None at genesis).
    height: u64,
    header: Option<Header>,
    /// The set that signed `height` (at genesis: the genesis set) and the number of
    /// signatures in the commit the client checked.
    set: ValidatorSet,
    signers: usize,
    /// The set of `height + 1`, verified.
    next: ValidatorSet,
    stats: Stats,
}

/// The outcome of checking one untrusted header against the trusted state.
enum Step {
    /// Verified, with its height's set; the set of the height + 1, verified too.
    Verified(Box<(ValidatorSet, ValidatorSet)>),
    /// A skip whose commit carries too little of the trusted set: bisect.
    NotEnoughTrust,
}

impl LightClient {
    /// Trusts the genesis set (the set of height 1) of chain `chain_id`.
    pub fn from_genesis(chain_id: &str, protocol: u32, genesis_set: ValidatorSet) -> Self {
        Self {
            chain_id: chain_id.to_string(),
            protocol,
            height: 0,
            header: None,
            set: genesis_set.clone(),
            signers: 0,
            next: genesis_set,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The last verified height and header (None before the first).
    pub fn trusted(&self) -> (u64, Option<&Header>) {
        (self.height, self.header.as_ref())
    }

    /// The set that signed the last verified height (before the first: the genesis set).
    pub fn trusted_set(&self) -> &ValidatorSet {
        &self.set
    }

    /// The number of signatures in the last verified commit.
    pub fn trusted_signers(&self) -> usize {
        self.signers
    }

    /// Verifies the header of `target` (above the trusted height) and returns it.
    pub async fn verify_to<S: Source>(
        &mut self,
        source: &mut S,
        target: u64,
    ) -> Result<Header, LightError> {
        if target <= self.height {
            return Err(fail(
                target,
                format!(
                    "the client already trusts height {}; it only verifies forward",
                    self.height
                ),
            ));
        }
        // Headers still to verify, the target at the bottom, the next to try on top.
        let mut pending = vec![self.fetch_header(source, target).await?];
        while let Some(untrusted) = pending.last() {
            let height = untrusted.header.height;
            match self.step(source, untrusted).await? {
                Step::Verified(sets) => {
                    let (set, next) = *sets;
                    let verified = pending.pop().expect("pending is not empty");
                    self.signers = verified.commit.signatures.len();
                    self.set = set;
                    if height > self.height + 1 {
                        self.stats.skips += 1;
                    }
                    self.stats.headers += 1;
                    self.height = height;
                    self.header = Some(verified.header);
                    self.next = next;
                }
                Step::NotEnoughTrust => {
                    // Never adjacent (an adjacent header needs no trust), so the pivot
                    // lies strictly between the trusted height and `height`.
                    let pivot = self.height + (height - self.height) / 2;
                    self.stats.bisections += 1;
                    let h = self.fetch_header(source, pivot).await?;
                    pending.push(h);
                }
            }
        }
        Ok(self.header.clone().expect("target verified"))
    }

    async fn fetch_header<S: Source>(
        &self,
        source: &mut S,
        height: u64,
    ) -> Result<SignedHeader, LightError> {
        let sh = source.signed_header(height).await.map_err(|e| {
            fail(
                height,
                format!("could not fetch the header and commit: {e}"),
            )
        })?;
        let header = &sh.header;
        if header.chain_id != self.chain_id {
            return Err(fail(
                height,
                format!(
                    "the node serves chain \"{}\" but the genesis file is for \"{}\"; pass the right --genesis or --node",
                    header.chain_id, self.chain_id
                ),
            ));
        }
        if header.height != height {
            return Err(fail(
                height,
                format!(
                    "asked for this header, the node sent height {}",
                    header.height
                ),
            ));
        }
        let expected = if self.protocol >= PROTOCOL_2 {
            PROTOCOL_2
        } else {
            ledger::types::HEADER_VERSION
        };
        // The protocol is the version's low 16 bits; the high ones may carry an upgrade
        // signal (ledger::upgrade).
        if header.protocol() != expected || !header.is_well_formed() {
            return Err(fail(
                height,
                format!(
                    "the header runs protocol {}, a protocol-{} chain's headers run protocol {expected}",
                    header.protocol(), self.protocol
                ),
            ));
        }
        Ok(sh)
    }

    /// Checks one untrusted header above the trusted height.
    async fn step<S: Source>(
        &mut self,
        source: &mut S,
        untrusted: &SignedHeader,
    ) -> Result<Step, LightError> {
        let header = &untrusted.header;
        let height = header.height;
        let hash = header.hash();
        if self.protocol < PROTOCOL_2 {
            // One set for every height: the genesis set's commit is all it takes.
            self.next
                .verify_commit(&self.chain_id, height, &hash, &untrusted.commit)
                .map_err(|e| {
                    fail(
                        height,
                        format!("the commit is not valid for the genesis validators: {e}"),
                    )
                })?;
            if header.validators_hash != self.next.hash() {
                return Err(fail(
                    height,
                    format!(
                        "the header names validator set {}, the genesis set hashes to {}",
                        hex::encode(header.validators_hash),
                        hex::encode(self.next.hash())
                    ),
                ));
            }
            return Ok(Step::Verified(Box::new((
                self.next.clone(),
                self.next.clone(),
            ))));
        }

        let adjacent = height == self.height + 1;
        let set = if adjacent {
            if header.validators_hash != self.next.hash() {
                return Err(fail(
                    height,
                    format!(
                        "the header names validator set {}, but the verified header {} says the set of height {height} is {}",
                        hex::encode(header.validators_hash),
                        self.height,
                        hex::encode(self.next.hash())
                    ),
                ));
            }
            self.next.clone()
        } else {
            self.fetch_set(
                source,
                height,
                &header.validators_hash,
                "its header's validators_hash",
            )
            .await?
        };
        set.verify_commit(&self.chain_id, height, &hash, &untrusted.commit)
            .map_err(|e| {
                fail(
                    height,
                    format!(
                        "the commit is not valid for the validator set of that height ({}): {e}",
                        hex::encode(set.hash())
                    ),
                )
            })?;
        if !adjacent {
            let power = self.trusted_power(&untrusted.commit);
            if !self.next.is_one_third(power) {
                return Ok(Step::NotEnoughTrust);
            }
        }
        let next_hash = header.next_validators_hash.ok_or_else(|| {
            fail(
                height,
                "the version-2 header has no next_validators_hash, so the next set cannot be checked",
            )
        })?;
        let next = self
            .fetch_set(
                source,
                height + 1,
                &next_hash,
                &format!("the next_validators_hash of verified header {height}"),
            )
            .await?;
        Ok(Step::Verified(Box::new((set, next))))
    }

    /// Fetches the set of `height` and checks it hashes to `expected` (named `whose`).
    async fn fetch_set<S: Source>(
        &mut self,
        source: &mut S,
        height: u64,
        expected: &Hash,
        whose: &str,
    ) -> Result<ValidatorSet, LightError> {
        let set = source
            .validator_set(height)
            .await
            .map_err(|e| fail(height, format!("could not fetch the validator set: {e}")))?;
        self.stats.sets_fetched += 1;
        if &set.hash() != expected {
            return Err(fail(
                height,
                format!(
                    "the validator set the node sent hashes to {}, but {whose} is {}; the node's set answer is wrong",
                    hex::encode(set.hash()),
                    hex::encode(expected)
                ),
            ));
        }
        Ok(set)
    }

    /// The power of the trusted set (the set of `self.height + 1`) among the commit's
    /// signers whose signature verifies with the trusted key. The caller has verified the
    /// commit against its own set, so its signers are sorted and unique.
    fn trusted_power(&self, commit: &Commit) -> u64 {
        let bytes = Vote {
            chain_id: self.chain_id.clone(),
            height: commit.height,
            round: commit.round,
            kind: VoteKind::Precommit,
            block_hash: Some(commit.block_hash),
        }
        .signing_bytes();
        commit
            .signatures
            .iter()
            .filter_map(|sig| {
                let v = self.next.get(&sig.validator)?;
                verify(&v.pubkey, &bytes, &sig.signature).ok()?;
                Some(v.power)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ledger::block::sign_commit;
    use ledger::crypto::Keypair;
    use ledger::types::Validator;
    use ledger::ZERO_HASH;

    use super::*;

    const CHAIN: &str = "light-test";

    fn key(i: usize) -> Keypair {
        Keypair::from_secret_bytes(&ledger::sha256(format!("light-{i}").as_bytes())).unwrap()
    }

    /// A set of keys `(index, power)`, sorted by address as protocol 2 sorts it.
    fn set(members: &[(usize, u64)]) -> ValidatorSet {
        let mut vals: Vec<Validator> = members
            .iter()
            .map(|&(i, power)| Validator {
                address: key(i).address(),
                pubkey: key(i).public_key(),
                power,
            })
            .collect();
        vals.sort_by_key(|v| v.address);
        ValidatorSet::new(vals).unwrap()
    }

    /// An honest protocol-2 chain in memory: `sets[h]` runs height h (index 0 unused),
    /// every commit signed by every member of its height's set. Counts the fetches.
    struct Chain {
        headers: HashMap<u64, SignedHeader>,
        sets: Vec<ValidatorSet>,
        header_fetches: usize,
        /// Answers for `validator_set` that replace the honest one.
        doctored_sets: HashMap<u64, ValidatorSet>,
    }

    impl Chain {
        /// `schedule`: (first height, members); each runs until the next one's height.
        fn new(tip: u64, schedule: &[(u64, Vec<(usize, u64)>)]) -> Self {
            let mut sets = Vec::new();
            let mut keys: Vec<Vec<usize>> = Vec::new();
            for h in 0..=tip + 1 {
                let members = &schedule
                    .iter()
                    .rev()
                    .find(|(from, _)| *from <= h.max(1))
                    .unwrap()
                    .1;
                sets.push(set(members));
                keys.push(members.iter().map(|m| m.0).collect());
            }
            let mut headers = HashMap::new();
            let mut prev = ZERO_HASH;
            for h in 1..=tip {
                let header = Header {
                    version: PROTOCOL_2,
                    chain_id: CHAIN.into(),
                    height: h,
                    round: 0,
                    time_ms: h,
                    prev_hash: prev,
                    tx_root: ZERO_HASH,
                    state_root: ledger::sha256(&h.to_be_bytes()),
                    validators_hash: sets[h as usize].hash(),
                    proposer: sets[h as usize].validators()[0].address,
                    last_commit_hash: ZERO_HASH,
                    next_validators_hash: Some(sets[h as usize + 1].hash()),
                };
                prev = header.hash();
                let signers: Vec<Keypair> = keys[h as usize].iter().map(|&i| key(i)).collect();
                let refs: Vec<&Keypair> = signers.iter().collect();
                let commit = sign_commit(CHAIN, h, 0, header.hash(), &refs);
                headers.insert(h, SignedHeader { header, commit });
            }
            Self {
                headers,
                sets,
                header_fetches: 0,
                doctored_sets: HashMap::new(),
            }
        }
    }

    impl Source for Chain {
        async fn signed_header(&mut self, height: u64) -> Result<SignedHeader, String> {
            self.header_fetches += 1;
            self.headers
                .get(&height)
                .cloned()
                .ok_or(format!("no block {height}"))
        }

        async fn validator_set(&mut self, height: u64) -> Result<ValidatorSet, String> {
            if let Some(s) = self.doctored_sets.get(&height) {
                return Ok(s.clone());
            }
            self.sets
                .get(height as usize)
                .cloned()
                .ok_or(format!("no set for {height}"))
        }
    }

    fn client(chain: &Chain) -> LightClient {
        LightClient::from_genesis(CHAIN, PROTOCOL_2, chain.sets[1].clone())
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Genesis 0..4 (10 each); at 20 key 4 joins with 10; at 40 keys 0 and 1 leave.
    fn gradual() -> Chain {
        let g: Vec<(usize, u64)> = (0..4).map(|i| (i, 10)).collect();
        let mut joined = g.clone();
        joined.push((4, 10));
        let left = vec![(2, 10), (3, 10), (4, 10)];
        Chain::new(60, &[(1, g), (20, joined), (40, left)])
    }

    #[test]
    fn skips_straight_to_the_tip_when_a_third_of_genesis_still_signs() {
        let mut chain = gradual();
        let mut lc = client(&chain);
        let h = run(lc.verify_to(&mut chain, 60)).unwrap();
        assert_eq!(h.height, 60);
        assert_eq!(h, chain.headers[&60].header);
        // Keys 2 and 3 (20 of genesis' 40) sign 60: one skip, no bisection.
        let s = lc.stats();
        assert_eq!((s.headers, s.skips, s.bisections), (1, 1, 0), "{s:?}");
        assert_eq!(chain.header_fetches, 1);
    }

    #[test]
    fn bisects_when_the_tip_set_shares_a_third_or_less_with_the_trusted_one() {
        // Genesis 0..4; at 10 keys 4..8 join with 10 each; at 30 genesis leaves. The tip's
        // signers carry none of genesis' power, so the client must bisect to a height
        // signed by both generations.
        let g: Vec<(usize, u64)> = (0..4).map(|i| (i, 10)).collect();
        let both: Vec<(usize, u64)> = (0..8).map(|i| (i, 10)).collect();
        let new: Vec<(usize, u64)> = (4..8).map(|i| (i, 10)).collect();
        let mut chain = Chain::new(50, &[(1, g), (10, both), (30, new)]);
        let mut lc = client(&chain);
        let h = run(lc.verify_to(&mut chain, 50)).unwrap();
        assert_eq!(h, chain.headers[&50].header);
        let s = lc.stats();
        assert!(s.bisections >= 1 && s.headers >= 2, "{s:?}");
        assert!(s.headers < 10, "bisection, not a walk: {s:?}");
    }

    #[test]
    fn walks_adjacent_headers_when_every_step_replaces_the_set() {
        // Each height's set is a fresh single key: no skip can be trusted, so the client
        // ends up verifying every header through next_validators_hash.
        let schedule: Vec<(u64, Vec<(usize, u64)>)> =
            (1..=9).map(|h| (h, vec![(h as usize, 10)])).collect();
        let mut chain = Chain::new(8, &schedule);
        let mut lc = client(&chain);
        run(lc.verify_to(&mut chain, 8)).unwrap();
        let s = lc.stats();
        assert_eq!((s.headers, s.skips), (8, 0), "{s:?}");
    }

    #[test]
    fn a_set_that_does_not_match_the_header_is_refused() {
        let mut chain = gradual();
        // The node answers the set of 60 with one member's power changed.
        chain
            .doctored_sets
            .insert(60, set(&[(2, 10), (3, 10), (4, 11)]));
        let mut lc = client(&chain);
        let e = run(lc.verify_to(&mut chain, 60)).unwrap_err();
        assert_eq!(e.height, 60, "{e}");
        assert!(e.reason.contains("its header's validators_hash"), "{e}");
        // The set of the next height is checked against next_validators_hash as well.
        let mut chain = gradual();
        chain.doctored_sets.insert(61, set(&[(2, 10)]));
        let e = run(client(&chain).verify_to(&mut chain, 60)).unwrap_err();
        assert_eq!(e.height, 61, "{e}");
        assert!(
            e.reason
                .contains("next_validators_hash of verified header 60"),
            "{e}"
        );
    }

    #[test]
    fn a_forged_set_with_a_matching_header_is_caught_by_the_trust_check() {
        // The node forges header 60 with a set of its own keys (9 and 10) and signs it:
        // the set matches the header and carries > 2/3, but no trusted validator signed,
        // so the client bisects down to the honest chain and finds the forgery does not
        // link to it.
        let mut chain = gradual();
        let forged_set = set(&[(9, 10), (10, 10)]);
        let mut header = chain.headers[&60].header.clone();
        header.validators_hash = forged_set.hash();
        header.state_root = ledger::sha256(b"forged");
        let commit = sign_commit(CHAIN, 60, 0, header.hash(), &[&key(9), &key(10)]);
        chain.headers.insert(60, SignedHeader { header, commit });
        chain.doctored_sets.insert(60, forged_set);
        let mut lc = client(&chain);
        let e = run(lc.verify_to(&mut chain, 60)).unwrap_err();
        // The client bisected down the honest chain to header 59, whose
        // next_validators_hash the forged set of 60 does not match.
        assert_eq!(e.height, 60, "{e}");
        assert!(e.reason.contains("verified header 59"), "{e}");
        assert_eq!(lc.trusted().0, 58);
        assert!(lc.stats().bisections >= 1);
    }

    #[test]
    fn an_adjacent_header_must_name_the_set_its_predecessor_announced() {
        // Header 1, signed by the genesis validators, names another set than genesis.
        let mut chain = gradual();
        let sh = chain.headers.get_mut(&1).unwrap();
        sh.header.validators_hash = set(&[(9, 10)]).hash();
        let keys: Vec<Keypair> = (0..4).map(key).collect();
        let refs: Vec<&Keypair> = keys.iter().collect();
        sh.commit = sign_commit(CHAIN, 1, 0, sh.header.hash(), &refs);
        let e = run(client(&chain).verify_to(&mut chain, 1)).unwrap_err();
        assert_eq!(e.height, 1, "{e}");
        assert!(e.reason.contains("but the verified header 0 says"), "{e}");
    }

    #[test]
    fn a_commit_with_too_little_power_is_refused() {
        let mut chain = gradual();
        // Header 5 signed by 2 of the 4 genesis validators: 20 of 40 is no quorum.
        let sh = chain.headers.get_mut(&5).unwrap();
        sh.commit = sign_commit(CHAIN, 5, 0, sh.header.hash(), &[&key(0), &key(1)]);
        let e = run(client(&chain).verify_to(&mut chain, 5)).unwrap_err();
        assert_eq!(e.height, 5, "{e}");
        assert!(e.reason.contains("20 of 40 voting power"), "{e}");
    }

    #[test]
    fn a_header_that_is_not_the_signed_one_is_refused() {
        let mut chain = gradual();
        // The node sends header 60 with another state root under the honest commit.
        chain.headers.get_mut(&60).unwrap().header.state_root = ledger::sha256(b"lie");
        let e = run(client(&chain).verify_to(&mut chain, 60)).unwrap_err();
        assert_eq!(e.height, 60, "{e}");
        assert!(e.reason.contains("commit is for block"), "{e}");
        // And a header of another height than asked for.
        let mut chain = gradual();
        let seven = chain.headers[&7].clone();
        chain.headers.insert(8, seven);
        let e = run(client(&chain).verify_to(&mut chain, 8)).unwrap_err();
        assert!(e.reason.contains("the node sent height 7"), "{e}");
    }

    #[test]
    fn protocol_1_verifies_any_height_with_the_genesis_set_and_fetches_no_set() {
        let g: Vec<(usize, u64)> = (0..4).map(|i| (i, 10)).collect();
        let mut chain = Chain::new(30, &[(1, g)]);
        for sh in chain.headers.values_mut() {
            sh.header.version = ledger::types::HEADER_VERSION;
            sh.header.next_validators_hash = None;
            let keys: Vec<Keypair> = (0..4).map(key).collect();
            let refs: Vec<&Keypair> = keys.iter().collect();
            sh.commit = sign_commit(CHAIN, sh.header.height, 0, sh.header.hash(), &refs);
        }
        let mut lc = LightClient::from_genesis(CHAIN, 1, chain.sets[1].clone());
        run(lc.verify_to(&mut chain, 30)).unwrap();
        let s = lc.stats();
        assert_eq!((s.headers, s.sets_fetched), (1, 0), "{s:?}");
        // Another genesis does not accept the commit.
        let mut other = LightClient::from_genesis(CHAIN, 1, set(&[(7, 10)]));
        let e = run(other.verify_to(&mut chain, 30)).unwrap_err();
        assert!(
            e.reason.contains("not valid for the genesis validators"),
            "{e}"
        );
    }
}
