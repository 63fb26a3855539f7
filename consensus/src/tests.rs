//! Table-driven tests of the handlers: each test is a list of rows (input, exact expected
//! outputs, expected state afterwards).

use ledger::crypto::Keypair;
use ledger::genesis::Params;
use ledger::hash::{sha256, Hash};
use ledger::types::{
    Commit, CommitSig, Proposal, SignedProposal, SignedVote, Validator, Vote, VoteKind,
};
use ledger::validators::ValidatorSet;

use crate::guard::{
    GuardError, GuardState, GuardStore, LastSigned, MemoryGuardStore, SignStep, SigningGuard,
};
use crate::types::*;
use crate::Consensus;

const CHAIN: &str = "tally-test";
const B: Hash = [0xb0; 32];
const C: Hash = [0xc0; 32];

struct Net {
    keys: Vec<Keypair>,
    set: ValidatorSet,
}

fn net(n: usize) -> Net {
    let keys: Vec<Keypair> = (0..n)
        .map(|i| Keypair::from_secret_bytes(&sha256(format!("unit-key-{i}").as_bytes())).unwrap())
        .collect();
    let set = ValidatorSet::new(
        keys.iter()
            .map(|k| Validator {
                address: k.address(),
                pubkey: k.public_key(),
                power: 1,
            })
            .collect(),
    )
    .unwrap();
    Net { keys, set }
}

impl Net {
    fn core(&self, me: Option<usize>) -> Consensus {
        Consensus::new(Config {
            chain_id: CHAIN.into(),
            validators: self.set.clone(),
            address: me.map(|i| self.keys[i].address()),
            timeouts: Timeouts::from(&Params::default()),
        })
    }

    fn proposer(&self, h: u64, r: u32) -> usize {
        let a = self.set.proposer(h, r).address;
        self.keys.iter().position(|k| k.address() == a).unwrap()
    }

    /// A validator index that proposes none of rounds 0..=2 of height 1.
    fn non_proposer(&self) -> usize {
        (0..self.keys.len())
            .find(|i| (0..3).all(|r| self.proposer(1, r) != *i))
            .unwrap()
    }

    fn others(&self, me: usize) -> Vec<usize> {
        (0..self.keys.len()).filter(|i| *i != me).collect()
    }

    fn vote(&self, i: usize, h: u64, r: u32, kind: VoteKind, hash: Option<Hash>) -> SignedVote {
        self.keys[i].sign_vote(unsigned_vote(h, r, kind, hash))
    }

    fn proposal(&self, h: u64, r: u32, pol: Option<u32>, hash: Hash) -> SignedProposal {
        self.keys[self.proposer(h, r)].sign_proposal(unsigned_proposal(h, r, pol, hash))
    }

    fn commit(&self, signers: &[usize], h: u64, r: u32, hash: Hash) -> Commit {
        let mut signatures: Vec<CommitSig> = signers
            .iter()
            .map(|i| {
                let v = self.vote(*i, h, r, VoteKind::Precommit, Some(hash));
                CommitSig {
                    validator: v.validator,
                    signature: v.signature,
                }
            })
            .collect();
        signatures.sort_by_key(|s| s.validator);
        Commit {
            height: h,
            round: r,
            block_hash: hash,
            signatures,
        }
    }
}

fn unsigned_vote(h: u64, r: u32, kind: VoteKind, hash: Option<Hash>) -> Vote {
    Vote {
        chain_id: CHAIN.into(),
        height: h,
        round: r,
        kind,
        block_hash: hash,
    }
}

fn unsigned_proposal(h: u64, r: u32, pol: Option<u32>, hash: Hash) -> Proposal {
    Proposal {
        chain_id: CHAIN.into(),
        height: h,
        round: r,
        pol_round: pol,
        block_hash: hash,
    }
}

fn prevote(h: u64, r: u32, hash: Option<Hash>) -> Output {
    Output::Vote(unsigned_vote(h, r, VoteKind::Prevote, hash))
}

fn precommit(h: u64, r: u32, hash: Option<Hash>) -> Output {
    Output::Vote(unsigned_vote(h, r, VoteKind::Precommit, hash))
}

fn timeout(h: u64, r: u32, step: TimeoutStep) -> Output {
    let t = Timeouts::from(&Params::default());
    Output::ScheduleTimeout {
        timeout: Timeout {
            height: h,
            round: r,
            step,
        },
        duration_ms: t.duration_ms(step, r),
    }
}

fn fire(h: u64, r: u32, step: TimeoutStep) -> Input {
    Input::Timeout(Timeout {
        height: h,
        round: r,
        step,
    })
}

fn locked(r: u32, hash: Hash) -> Option<RoundValue> {
    Some(RoundValue {
        round: r,
        block_hash: hash,
    })
}

/// Expected state after a row: (round, step, locked value).
type State = (u32, Step, Option<RoundValue>);

struct Row {
    input: Input,
    expect: Vec<Output>,
    state: Option<State>,
}

fn row(input: Input, expect: Vec<Output>) -> Row {
    Row {
        input,
        expect,
        state: None,
    }
}

fn row_s(input: Input, expect: Vec<Output>, state: State) -> Row {
    Row {
        input,
        expect,
        state: Some(state),
    }
}

fn run(core: &mut Consensus, rows: Vec<Row>) {
    for (i, r) in rows.into_iter().enumerate() {
        let what = format!("row {i}: {:?}", r.input);
        let got = core.handle(r.input);
        assert_eq!(got, r.expect, "{what}");
        if let Some((round, step, lock)) = r.state {
            assert_eq!(
                (core.round(), core.step(), core.locks().locked),
                (round, step, lock),
                "state after {what}"
            );
        }
    }
}

#[test]
fn proposer_builds_proposes_locks_and_decides() {
    let n = net(4);
    let me = n.proposer(1, 0);
    let o = n.others(me);
    let mut core = n.core(Some(me));
    run(
        &mut core,
        vec![
            row_s(
                Input::StartHeight { height: 1 },
                vec![
                    Output::RoundChanged {
                        height: 1,
                        round: 0,
                    },
                    Output::BuildProposal {
                        height: 1,
                        round: 0,
                    },
                    timeout(1, 0, TimeoutStep::Propose),
                ],
                (0, Step::Propose, None),
            ),
            row(
                Input::ProposalBuilt {
                    height: 1,
                    round: 0,
                    block_hash: B,
                },
                vec![Output::Propose(unsigned_proposal(1, 0, None, B))],
            ),
            // Own proposal fed back after signing: line 22, valid (we built it), no lock.
            row_s(
                Input::Proposal(n.proposal(1, 0, None, B)),
                vec![prevote(1, 0, Some(B))],
                (0, Step::Prevote, None),
            ),
            row(
                Input::Vote(n.vote(me, 1, 0, VoteKind::Prevote, Some(B))),
                vec![],
            ),
            row(
                Input::Vote(n.vote(o[0], 1, 0, VoteKind::Prevote, Some(B))),
                vec![],
            ),
            // 3 of 4: line 34 (timeout) and line 36 (lock + precommit).
            row_s(
                Input::Vote(n.vote(o[1], 1, 0, VoteKind::Prevote, Some(B))),
                vec![
                    timeout(1, 0, TimeoutStep::Prevote),
                    precommit(1, 0, Some(B)),
                ],
                (0, Step::Precommit, locked(0, B)),
            ),
            row(
                Input::Vote(n.vote(me, 1, 0, VoteKind::Precommit, Some(B))),
                vec![],
            ),
            row(
                Input::Vote(n.vote(o[0], 1, 0, VoteKind::Precommit, Some(B))),
                vec![],
            ),
            // Line 49.
            row_s(
                Input::Vote(n.vote(o[1], 1, 0, VoteKind::Precommit, Some(B))),
                vec![Output::Decide {
                    height: 1,
                    round: 0,
                    block_hash: B,
                    commit: n.commit(&[me, o[0], o[1]], 1, 0, B),
                }],
                (0, Step::Decided, locked(0, B)),
            ),
            // Late votes of a decided height change nothing.
            row(
                Input::Vote(n.vote(o[2], 1, 0, VoteKind::Precommit, Some(B))),
                vec![],
            ),
        ],
    );
    let commit = n.commit(&[me, o[0], o[1]], 1, 0, B);
    assert_eq!(n.set.verify_commit(CHAIN, 1, &B, &commit), Ok(()));
}

#[test]
fn validator_prevotes_only_after_the_block_is_validated() {
    let n = net(4);
    let me = n.non_proposer();
    for (valid, vote) in [(true, Some(B)), (false, None)] {
        let mut core = n.core(Some(me));
        run(
            &mut core,
            vec![
                row(
                    Input::StartHeight { height: 1 },
                    vec![
                        Output::RoundChanged {
                            height: 1,
                            round: 0,
                        },
                        timeout(1, 0, TimeoutStep::Propose),
                    ],
                ),
                row_s(
                    Input::Proposal(n.proposal(1, 0, None, B)),
                    vec![Output::ValidateBlock {
                        height: 1,
                        round: 0,
                        block_hash: B,
                    }],
                    (0, Step::Propose, None),
                ),
                // Duplicate proposal: no second validation request.
                row(Input::Proposal(n.proposal(1, 0, None, B)), vec![]),
                // Line 22: valid(v) decides between v and nil.
                row_s(
                    Input::BlockValidated {
                        height: 1,
                        block_hash: B,
                        valid,
                    },
                    vec![prevote(1, 0, vote)],
                    (0, Step::Prevote, None),
                ),
            ],
        );
    }
}

#[test]
fn bad_proposals_are_ignored() {
    let n = net(4);
    let me = n.non_proposer();
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    let wrong_signer =
        n.keys[(n.proposer(1, 0) + 1) % 4].sign_proposal(unsigned_proposal(1, 0, None, B));
    let mut other_chain = unsigned_proposal(1, 0, None, B);
    other_chain.chain_id = "other".into();
    let other_chain = n.keys[n.proposer(1, 0)].sign_proposal(other_chain);
    let mut forged = n.proposal(1, 0, None, B);
    forged.signature[5] ^= 1;
    run(
        &mut core,
        vec![
            row(Input::Proposal(wrong_signer), vec![]),
            row(Input::Proposal(other_chain), vec![]),
            row(Input::Proposal(forged), vec![]),
            // pol_round must be below the round.
            row(Input::Proposal(n.proposal(1, 0, Some(0), B)), vec![]),
            row(Input::Proposal(n.proposal(1, 2, Some(3), B)), vec![]),
            // Older height: ignored, not buffered.
            row(Input::Proposal(n.proposal(0, 0, None, B)), vec![]),
            // The genuine one still gets through.
            row(
                Input::Proposal(n.proposal(1, 0, None, B)),
                vec![Output::ValidateBlock {
                    height: 1,
                    round: 0,
                    block_hash: B,
                }],
            ),
        ],
    );
}

#[test]
fn timeouts_move_through_nil_votes_to_the_next_round() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    let pv = |i: usize, h: Option<Hash>| Input::Vote(n.vote(i, 1, 0, VoteKind::Prevote, h));
    let pc = |i: usize, h: Option<Hash>| Input::Vote(n.vote(i, 1, 0, VoteKind::Precommit, h));
    run(
        &mut core,
        vec![
            // Line 57.
            row_s(
                fire(1, 0, TimeoutStep::Propose),
                vec![prevote(1, 0, None)],
                (0, Step::Prevote, None),
            ),
            // Repeated or stale timeouts do nothing.
            row(fire(1, 0, TimeoutStep::Propose), vec![]),
            row(fire(0, 0, TimeoutStep::Prevote), vec![]),
            row(pv(o[0], Some(B)), vec![]),
            row(pv(o[1], Some(B)), vec![]),
            // Line 34: 2f+1 prevotes of mixed values.
            row(pv(o[2], None), vec![timeout(1, 0, TimeoutStep::Prevote)]),
            row(pv(me, None), vec![]),
            // Line 61.
            row_s(
                fire(1, 0, TimeoutStep::Prevote),
                vec![precommit(1, 0, None)],
                (0, Step::Precommit, None),
            ),
            row(pc(o[0], None), vec![]),
            row(pc(o[1], Some(B)), vec![]),
            // Line 47.
            row(pc(o[2], None), vec![timeout(1, 0, TimeoutStep::Precommit)]),
            // Line 65: round 1, with a longer propose timeout (base + delta * round).
            row_s(
                fire(1, 0, TimeoutStep::Precommit),
                vec![
                    Output::RoundChanged {
                        height: 1,
                        round: 1,
                    },
                    timeout(1, 1, TimeoutStep::Propose),
                ],
                (1, Step::Propose, None),
            ),
        ],
    );
    assert_eq!(
        timeout(1, 1, TimeoutStep::Propose),
        Output::ScheduleTimeout {
            timeout: Timeout {
                height: 1,
                round: 1,
                step: TimeoutStep::Propose
            },
            duration_ms: 3500
        }
    );
}

#[test]
fn two_thirds_nil_prevotes_precommit_nil() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    core.handle(fire(1, 0, TimeoutStep::Propose));
    let pv = |i: usize| Input::Vote(n.vote(i, 1, 0, VoteKind::Prevote, None));
    run(
        &mut core,
        vec![
            row(pv(o[0]), vec![]),
            row(pv(o[1]), vec![]),
            // Line 34 then line 44.
            row_s(
                pv(o[2]),
                vec![timeout(1, 0, TimeoutStep::Prevote), precommit(1, 0, None)],
                (0, Step::Precommit, None),
            ),
        ],
    );
}

#[test]
fn f_plus_one_votes_of_a_later_round_skip_ahead() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    let mut expect = vec![Output::RoundChanged {
        height: 1,
        round: 3,
    }];
    if n.proposer(1, 3) == me {
        expect.push(Output::BuildProposal {
            height: 1,
            round: 3,
        });
    }
    expect.push(timeout(1, 3, TimeoutStep::Propose));
    run(
        &mut core,
        vec![
            row(
                Input::Vote(n.vote(o[0], 1, 3, VoteKind::Prevote, None)),
                vec![],
            ),
            // The same validator again (other kind) is still 1 of 4: not f+1.
            row(
                Input::Vote(n.vote(o[0], 1, 3, VoteKind::Precommit, None)),
                vec![],
            ),
            // Line 55: two distinct validators (> 1/3).
            row_s(
                Input::Vote(n.vote(o[1], 1, 3, VoteKind::Prevote, Some(B))),
                expect,
                (3, Step::Propose, None),
            ),
            // Beyond the future-round window: dropped.
            row(
                Input::Vote(n.vote(
                    o[0],
                    1,
                    3 + crate::FUTURE_ROUNDS + 1,
                    VoteKind::Prevote,
                    None,
                )),
                vec![],
            ),
        ],
    );
}

/// Lock in round 0, then refuse a different value in round 1 (line 23), and unlock
/// through a proof-of-lock from a later round (line 29).
#[test]
fn a_locked_validator_prevotes_only_its_lock_unless_shown_a_newer_pol() {
    let n = net(4);
    // A validator that proposes none of rounds 0..3.
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    let v = |i: usize, r: u32, k: VoteKind, h: Option<Hash>| Input::Vote(n.vote(i, 1, r, k, h));
    let valid = |h: Hash| Input::BlockValidated {
        height: 1,
        block_hash: h,
        valid: true,
    };
    let validate = |r: u32, h: Hash| Output::ValidateBlock {
        height: 1,
        round: r,
        block_hash: h,
    };
    run(
        &mut core,
        vec![
            row(
                Input::Proposal(n.proposal(1, 0, None, B)),
                vec![validate(0, B)],
            ),
            row(valid(B), vec![prevote(1, 0, Some(B))]),
            row(v(o[0], 0, VoteKind::Prevote, Some(B)), vec![]),
            row(v(o[1], 0, VoteKind::Prevote, Some(B)), vec![]),
            row_s(
                v(o[2], 0, VoteKind::Prevote, Some(B)),
                vec![
                    timeout(1, 0, TimeoutStep::Prevote),
                    precommit(1, 0, Some(B)),
                ],
                (0, Step::Precommit, locked(0, B)),
            ),
            row(v(o[0], 0, VoteKind::Precommit, None), vec![]),
            row(v(o[1], 0, VoteKind::Precommit, None), vec![]),
            // 2f+1 nil precommits: round 1 at once, without timeout_precommit.
            row(
                v(o[2], 0, VoteKind::Precommit, None),
                vec![
                    timeout(1, 0, TimeoutStep::Precommit),
                    Output::RoundChanged {
                        height: 1,
                        round: 1,
                    },
                    timeout(1, 1, TimeoutStep::Propose),
                ],
            ),
            row(fire(1, 0, TimeoutStep::Precommit), vec![]),
            // Round 1: C without a proof of lock. Valid, but we are locked on B: nil.
            row(
                Input::Proposal(n.proposal(1, 1, None, C)),
                vec![validate(1, C)],
            ),
            row_s(
                valid(C),
                vec![prevote(1, 1, None)],
                (1, Step::Prevote, locked(0, B)),
            ),
            // 2f+1 prevotes for C in round 1 (a POL for C in round 1): line 36 in step
            // prevote: we relock on C.
            row(v(o[0], 1, VoteKind::Prevote, Some(C)), vec![]),
            row(v(o[1], 1, VoteKind::Prevote, Some(C)), vec![]),
            row_s(
                v(o[2], 1, VoteKind::Prevote, Some(C)),
                vec![
                    timeout(1, 1, TimeoutStep::Prevote),
                    precommit(1, 1, Some(C)),
                ],
                (1, Step::Precommit, locked(1, C)),
            ),
        ],
    );
    assert_eq!(core.locks().valid, locked(1, C));
}

#[test]
fn proof_of_lock_from_a_later_round_unlocks() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    let v = |i: usize, r: u32, k: VoteKind, h: Option<Hash>| Input::Vote(n.vote(i, 1, r, k, h));
    // Lock on B in round 0.
    core.handle(Input::Proposal(n.proposal(1, 0, None, B)));
    core.handle(Input::BlockValidated {
        height: 1,
        block_hash: B,
        valid: true,
    });
    for i in &o {
        core.handle(v(*i, 0, VoteKind::Prevote, Some(B)));
    }
    assert_eq!(core.locks().locked, locked(0, B));
    // Round 2 jump (f+1 precommits nil of round 2), C prevoted by 3 others in round 1
    // (without the proposal we never saw it): a POL for C at round 1.
    for i in &o {
        core.handle(v(*i, 1, VoteKind::Prevote, Some(C)));
    }
    for i in &o[..2] {
        core.handle(v(*i, 2, VoteKind::Precommit, None));
    }
    assert_eq!(core.round(), 2);
    let expect = vec![Output::ValidateBlock {
        height: 1,
        round: 2,
        block_hash: C,
    }];
    run(
        &mut core,
        vec![
            // Line 28: proposal of C with pol_round 1 > lockedRound 0: unlock-vote for C
            // once C is known valid.
            row(Input::Proposal(n.proposal(1, 2, Some(1), C)), expect),
            row_s(
                Input::BlockValidated {
                    height: 1,
                    block_hash: C,
                    valid: true,
                },
                vec![prevote(1, 2, Some(C))],
                (2, Step::Prevote, locked(0, B)),
            ),
        ],
    );
}

#[test]
fn votes_are_deduplicated_verified_and_equivocation_is_evidence() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    let first = n.vote(o[0], 1, 0, VoteKind::Prevote, Some(B));
    let second = n.vote(o[0], 1, 0, VoteKind::Prevote, Some(C));
    let third = n.vote(o[0], 1, 0, VoteKind::Prevote, None);
    let mut forged = n.vote(o[1], 1, 0, VoteKind::Prevote, Some(B));
    forged.signature[3] ^= 1;
    let mut impostor = n.vote(o[1], 1, 0, VoteKind::Prevote, Some(C));
    impostor.validator = n.keys[o[2]].address();
    let outsider = Keypair::from_secret_bytes(&sha256(b"outsider"))
        .unwrap()
        .sign_vote(unsigned_vote(1, 0, VoteKind::Prevote, Some(B)));
    run(
        &mut core,
        vec![
            row(Input::Vote(first.clone()), vec![]),
            row(Input::Vote(first.clone()), vec![]),
            row(
                Input::Vote(second.clone()),
                vec![Output::Evidence(Box::new(Equivocation {
                    first: first.clone(),
                    second,
                }))],
            ),
            // Reported once.
            row(Input::Vote(third), vec![]),
            row(Input::Vote(forged), vec![]),
            row(Input::Vote(impostor), vec![]),
            row(Input::Vote(outsider), vec![]),
            // Only `first` counts: two more honest prevotes for B make 3 of 4.
            row(
                Input::Vote(n.vote(o[1], 1, 0, VoteKind::Prevote, Some(B))),
                vec![],
            ),
        ],
    );
    // Still in propose: the quorum rules only react at prevote; verify the count through
    // line 36 after our own timeout.
    let out = core.handle(fire(1, 0, TimeoutStep::Propose));
    assert_eq!(out, vec![prevote(1, 0, None)]);
    let out = core.handle(Input::Vote(n.vote(o[2], 1, 0, VoteKind::Prevote, Some(B))));
    // 3 prevotes for B without the proposal: line 34 only.
    assert_eq!(out, vec![timeout(1, 0, TimeoutStep::Prevote)]);
}

#[test]
fn full_node_follows_and_decides_without_voting() {
    let n = net(4);
    let mut core = n.core(None);
    let pc = |i: usize| Input::Vote(n.vote(i, 1, 0, VoteKind::Precommit, Some(B)));
    run(
        &mut core,
        vec![
            row(
                Input::StartHeight { height: 1 },
                vec![
                    Output::RoundChanged {
                        height: 1,
                        round: 0,
                    },
                    timeout(1, 0, TimeoutStep::Propose),
                ],
            ),
            row(
                Input::Proposal(n.proposal(1, 0, None, B)),
                vec![Output::ValidateBlock {
                    height: 1,
                    round: 0,
                    block_hash: B,
                }],
            ),
            row_s(
                Input::BlockValidated {
                    height: 1,
                    block_hash: B,
                    valid: true,
                },
                vec![],
                (0, Step::Prevote, None),
            ),
            row(pc(0), vec![]),
            row(pc(1), vec![]),
            row(
                pc(2),
                vec![Output::Decide {
                    height: 1,
                    round: 0,
                    block_hash: B,
                    commit: n.commit(&[0, 1, 2], 1, 0, B),
                }],
            ),
        ],
    );
}

/// A precommit that comes after the decision is recorded without firing anything, so the
/// engine can tell when the whole set's precommits are in (it then starts the next height
/// without waiting out `timeout_commit` while txs wait). A nil precommit does not complete
/// the set, and before the decision nothing does.
#[test]
fn precommits_after_the_decision_complete_the_set_without_firing_rules() {
    let n = net(4);
    let mut core = n.core(None);
    let pc = |i: usize, hash: Option<Hash>| Input::Vote(n.vote(i, 1, 0, VoteKind::Precommit, hash));
    core.handle(Input::StartHeight { height: 1 });
    core.handle(Input::Proposal(n.proposal(1, 0, None, B)));
    core.handle(Input::BlockValidated {
        height: 1,
        block_hash: B,
        valid: true,
    });
    for i in 0..2 {
        core.handle(pc(i, Some(B)));
    }
    assert!(!core.every_precommit_in(), "undecided");
    let decided = core.handle(pc(2, Some(B)));
    assert!(
        matches!(decided.as_slice(), [Output::Decide { .. }]),
        "{decided:?}"
    );
    assert!(!core.every_precommit_in(), "3 of 4");

    // The fourth validator's late precommit: nothing fires, and the set is complete.
    let mut nil_core = n.core(None);
    for input in [
        Input::StartHeight { height: 1 },
        Input::Proposal(n.proposal(1, 0, None, B)),
    ] {
        nil_core.handle(input);
    }
    assert_eq!(core.handle(pc(3, Some(B))), vec![]);
    assert!(core.every_precommit_in());
    assert_eq!(core.step(), Step::Decided);

    // The same height where the fourth precommitted nil: not complete.
    for i in 0..3 {
        nil_core.handle(pc(i, Some(B)));
    }
    nil_core.handle(Input::BlockValidated {
        height: 1,
        block_hash: B,
        valid: true,
    });
    assert_eq!(nil_core.step(), Step::Decided);
    assert_eq!(nil_core.handle(pc(3, None)), vec![]);
    assert!(!nil_core.every_precommit_in());
}

#[test]
fn commit_from_a_peer_catches_up_and_next_height_messages_are_replayed() {
    let n = net(4);
    let mut core = n.core(None);
    core.handle(Input::StartHeight { height: 1 });
    let next = n.vote(0, 2, 0, VoteKind::Prevote, Some(C));
    let commit = n.commit(&[0, 1, 2], 1, 7, B);
    run(
        &mut core,
        vec![
            // Height 2 already running elsewhere: buffered.
            row(Input::Vote(next.clone()), vec![]),
            // A commit at round 7 (beyond where we are): verified vote by vote; it also
            // counts as f+1 (line 55) and 2f+1 precommits of round 7 (line 47).
            row(
                Input::Commit(commit.clone()),
                vec![
                    Output::ValidateBlock {
                        height: 1,
                        round: 7,
                        block_hash: B,
                    },
                    Output::RoundChanged {
                        height: 1,
                        round: 7,
                    },
                    timeout(1, 7, TimeoutStep::Propose),
                    timeout(1, 7, TimeoutStep::Precommit),
                ],
            ),
            row_s(
                Input::BlockValidated {
                    height: 1,
                    block_hash: B,
                    valid: true,
                },
                vec![Output::Decide {
                    height: 1,
                    round: 7,
                    block_hash: B,
                    commit,
                }],
                (7, Step::Decided, None),
            ),
        ],
    );
    assert_eq!(core.buffered(), 1);
    core.handle(Input::StartHeight { height: 2 });
    assert_eq!(core.buffered(), 0);
    // The replayed vote counts: a second one equivocating is evidence.
    let out = core.handle(Input::Vote(n.vote(0, 2, 0, VoteKind::Prevote, Some(B))));
    assert!(matches!(&out[..], [Output::Evidence(e)] if e.first == next));
}

#[test]
fn invalid_commit_does_not_decide() {
    let n = net(4);
    let mut core = n.core(None);
    core.handle(Input::StartHeight { height: 1 });
    let mut commit = n.commit(&[0, 1, 2], 1, 0, B);
    commit.signatures[2].signature[9] ^= 1;
    run(&mut core, vec![row(Input::Commit(commit), vec![])]);
    let two = n.commit(&[0, 1], 1, 0, B);
    run(&mut core, vec![row(Input::Commit(two), vec![])]);
}

#[test]
fn restart_resumes_the_last_signed_round_with_the_lock() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let state = GuardState {
        last_signed: Some(LastSigned {
            height: 1,
            round: 1,
            step: SignStep::Precommit,
            block_hash: Some(B),
        }),
        height_signed: vec![
            LastSigned {
                height: 1,
                round: 0,
                step: SignStep::Precommit,
                block_hash: None,
            },
            LastSigned {
                height: 1,
                round: 1,
                step: SignStep::Prevote,
                block_hash: Some(B),
            },
            LastSigned {
                height: 1,
                round: 1,
                step: SignStep::Precommit,
                block_hash: Some(B),
            },
        ],
        locked: locked(1, B),
        valid: locked(1, B),
        valid_pol: vec![],
    };
    let mut core = n.core(Some(me));
    core.resume(&state);
    let pc = |i: usize| Input::Vote(n.vote(i, 1, 1, VoteKind::Precommit, None));
    run(
        &mut core,
        vec![
            // Back in round 1 at precommit, re-signing the identical precommit.
            row_s(
                Input::StartHeight { height: 1 },
                vec![
                    Output::RoundChanged {
                        height: 1,
                        round: 1,
                    },
                    timeout(1, 1, TimeoutStep::Propose),
                    // An earlier round's vote is re-signed too.
                    precommit(1, 0, None),
                    prevote(1, 1, Some(B)),
                    precommit(1, 1, Some(B)),
                ],
                (1, Step::Precommit, locked(1, B)),
            ),
            row(pc(o[0]), vec![]),
            row(pc(o[1]), vec![]),
            // The other three precommit nil: 2f+1 nil, round 2 at once.
            row(
                pc(o[2]),
                vec![
                    timeout(1, 1, TimeoutStep::Precommit),
                    Output::RoundChanged {
                        height: 1,
                        round: 2,
                    },
                    timeout(1, 2, TimeoutStep::Propose),
                ],
            ),
            row(fire(1, 1, TimeoutStep::Precommit), vec![]),
            // Still locked on B after the restart: C without a proof of lock gets nil.
            row(
                Input::Proposal(n.proposal(1, 2, None, C)),
                vec![Output::ValidateBlock {
                    height: 1,
                    round: 2,
                    block_hash: C,
                }],
            ),
            row_s(
                Input::BlockValidated {
                    height: 1,
                    block_hash: C,
                    valid: true,
                },
                vec![prevote(1, 2, None)],
                (2, Step::Prevote, locked(1, B)),
            ),
        ],
    );
    // The re-signed precommit is exactly what the guard allows after reloading.
    let mut store = MemoryGuardStore::default();
    store.save(&state).unwrap();
    let mut guard = SigningGuard::open(store).unwrap();
    for kind in [VoteKind::Prevote, VoteKind::Precommit] {
        assert!(guard
            .authorize_vote(&unsigned_vote(1, 1, kind, Some(B)), core.locks())
            .is_ok());
    }
    assert!(guard
        .authorize_vote(&unsigned_vote(1, 1, VoteKind::Prevote, None), core.locks())
        .is_err());
    // A guard state from an older height does not leak its lock.
    let mut core = n.core(Some(me));
    core.resume(&state);
    core.handle(Input::StartHeight { height: 2 });
    assert_eq!((core.round(), core.locks()), (0, Locks::default()));
}

#[test]
fn guard_refuses_conflicts_and_persists_before_allowing() {
    let v = |r: u32, k: VoteKind, h: Option<Hash>| unsigned_vote(5, r, k, h);
    let mut g = SigningGuard::open(MemoryGuardStore::default()).unwrap();

    assert!(g
        .authorize_proposal(&unsigned_proposal(5, 0, None, B), Locks::default())
        .is_ok());
    assert!(g
        .authorize_vote(&v(0, VoteKind::Prevote, Some(B)), Locks::default())
        .is_ok());
    // Identical re-sign is fine; a different value at the same step is not.
    assert!(g
        .authorize_vote(&v(0, VoteKind::Prevote, Some(B)), Locks::default())
        .is_ok());
    assert!(matches!(
        g.authorize_vote(&v(0, VoteKind::Prevote, None), Locks::default()),
        Err(GuardError::Conflict { .. })
    ));
    assert!(g
        .authorize_vote(&v(0, VoteKind::Precommit, Some(B)), Locks::default())
        .is_ok());
    assert_eq!(
        g.state().locked,
        locked(0, B),
        "a precommit for v is a lock on v"
    );
    // Going back is refused, except for re-signing the identical messages of the
    // current round (what a restarted node re-broadcasts).
    assert!(g
        .authorize_vote(&v(0, VoteKind::Prevote, Some(B)), Locks::default())
        .is_ok());
    assert!(g
        .authorize_proposal(&unsigned_proposal(5, 0, None, B), Locks::default())
        .is_ok());
    assert!(g
        .authorize_proposal(&unsigned_proposal(5, 0, None, C), Locks::default())
        .is_err());
    assert!(g
        .authorize_vote(
            &unsigned_vote(4, 9, VoteKind::Precommit, Some(B)),
            Locks::default()
        )
        .is_err());
    // Persisted before it returned: a restarted guard still refuses.
    let store = g.into_store();
    assert_eq!(
        store.load().unwrap().unwrap().last_signed.unwrap().step,
        SignStep::Precommit
    );
    let mut g = SigningGuard::open(store).unwrap();
    assert!(g
        .authorize_vote(&v(0, VoteKind::Precommit, None), Locks::default())
        .is_err());
    assert_eq!(g.state().locked, locked(0, B));
    // A stale caller passing no lock does not erase it.
    assert!(g
        .authorize_vote(&v(1, VoteKind::Prevote, None), Locks::default())
        .is_ok());
    assert_eq!(g.state().locked, locked(0, B));
    // A new height starts with the caller's (empty) locks.
    assert!(g
        .authorize_vote(
            &unsigned_vote(6, 0, VoteKind::Prevote, None),
            Locks::default()
        )
        .is_ok());
    assert_eq!(g.state().locked, None);
}

#[test]
fn guard_refuses_when_it_cannot_persist() {
    let mut store = MemoryGuardStore::default();
    store.fail_saves = true;
    let mut g = SigningGuard::open(store).unwrap();
    let vote = unsigned_vote(1, 0, VoteKind::Prevote, Some(B));
    assert!(matches!(
        g.authorize_vote(&vote, Locks::default()),
        Err(GuardError::Store(_))
    ));
    assert_eq!(g.state(), &GuardState::default());
}

#[test]
fn guard_state_is_borsh() {
    let s = GuardState {
        last_signed: Some(LastSigned {
            height: 3,
            round: 2,
            step: SignStep::Prevote,
            block_hash: None,
        }),
        height_signed: vec![],
        locked: locked(1, B),
        valid: None,
        valid_pol: vec![],
    };
    let bytes = borsh::to_vec(&s).unwrap();
    assert_eq!(borsh::from_slice::<GuardState>(&bytes).unwrap(), s);
}

#[test]
fn the_proof_of_lock_is_persisted_and_restored() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    let mut guard = SigningGuard::open(MemoryGuardStore::default()).unwrap();
    // Carry out Vote outputs the way the engine does: guard, sign, feed back.
    let mut engine = |core: &mut Consensus, out: Vec<Output>| {
        for o in out {
            if let Output::Vote(v) = o {
                guard.authorize_vote(&v, core.locks()).unwrap();
                core.handle(Input::Vote(n.keys[me].sign_vote(v)));
            }
        }
    };
    let out = core.handle(Input::StartHeight { height: 1 });
    engine(&mut core, out);
    core.handle(Input::Proposal(n.proposal(1, 0, None, B)));
    let out = core.handle(Input::BlockValidated {
        height: 1,
        block_hash: B,
        valid: true,
    });
    engine(&mut core, out);
    core.handle(Input::Vote(n.vote(o[0], 1, 0, VoteKind::Prevote, Some(B))));
    let out = core.handle(Input::Vote(n.vote(o[1], 1, 0, VoteKind::Prevote, Some(B))));
    assert!(out.contains(&precommit(1, 0, Some(B))));
    assert_eq!(core.locks().valid_pol.len(), 3);
    engine(&mut core, out);
    let guard = SigningGuard::open(guard.into_store()).unwrap();
    assert_eq!(guard.state().valid_pol.len(), 3);
    assert_eq!(guard.state().locked, locked(0, B));
    let mut restarted = n.core(Some(me));
    restarted.resume(guard.state());
    restarted.handle(Input::StartHeight { height: 1 });
    let prevotes = restarted
        .votes(0)
        .into_iter()
        .filter(|v| v.vote.kind == VoteKind::Prevote);
    assert_eq!(
        prevotes.count(),
        3,
        "the proof of lock is held again after the restart"
    );
    assert_eq!(restarted.locks(), core.locks());
}

/// 40 validators (the old 4 KiB cap on the stored state broke at 39): a validator locked
/// with every prevote as its proof of lock, at the guard's full 192 signed messages of one
/// height, reopens its store with the same state.
#[test]
fn forty_validators_full_guard_state_reopens() {
    let n = net(40);
    let hash = B;
    let pol: Vec<SignedVote> = (0..40)
        .map(|i| n.vote(i, 1, 0, VoteKind::Prevote, Some(hash)))
        .collect();
    let locks = Locks {
        locked: locked(0, hash),
        valid: locked(0, hash),
        valid_pol: pol,
    };
    let mut guard = SigningGuard::open(MemoryGuardStore::default()).unwrap();
    for round in 0..(crate::MAX_HEIGHT_SIGNED as u32 / 2 + 1) {
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            guard
                .authorize_vote(&unsigned_vote(1, round, kind, Some(hash)), locks.clone())
                .unwrap();
        }
    }
    let saved = guard.state().clone();
    assert_eq!(saved.height_signed.len(), crate::MAX_HEIGHT_SIGNED);
    assert_eq!(saved.valid_pol.len(), 40);
    assert!(saved.encoded_len() <= crate::MAX_GUARD_STATE_BYTES);
    let reopened = SigningGuard::open(guard.into_store()).unwrap();
    assert_eq!(reopened.state(), &saved);
}

/// The bound is derived from the ledger's own limit on validators: one more is refused.
#[test]
fn max_validators_is_the_ledgers_limit() {
    let validator = |i: usize| Validator {
        address: sha256(&i.to_le_bytes())[..20].try_into().unwrap(),
        pubkey: [2; 33],
        power: 1,
    };
    let too_many: Vec<Validator> = (0..=crate::MAX_VALIDATORS).map(validator).collect();
    assert!(ValidatorSet::new(too_many).is_err());
}

/// A caller handing the guard more than the core can build (here a proof of lock with
/// more votes than the largest validator set has validators) is refused, not saved: a
/// state that could not be read back would stop the next start.
#[test]
fn guard_refuses_a_state_it_could_not_read_back() {
    let mut store = MemoryGuardStore::default();
    let vote = n_vote_template();
    let locks = Locks {
        locked: None,
        valid: locked(0, B),
        valid_pol: vec![vote; crate::MAX_VALIDATORS + crate::MAX_HEIGHT_SIGNED],
    };
    let mut g = SigningGuard::open(store.clone()).unwrap();
    let r = g.authorize_vote(&unsigned_vote(1, 0, VoteKind::Prevote, Some(B)), locks);
    assert!(
        matches!(r, Err(GuardError::TooLarge { max, .. }) if max == crate::MAX_GUARD_STATE_BYTES),
        "{r:?}"
    );
    assert_eq!(g.state(), &GuardState::default());
    store = g.into_store();
    assert_eq!(store.load().unwrap(), None, "nothing was saved");
}

fn n_vote_template() -> SignedVote {
    SignedVote {
        vote: Vote {
            chain_id: "c".repeat(ledger::genesis::MAX_CHAIN_ID_LEN),
            ..unsigned_vote(1, 0, VoteKind::Prevote, Some(B))
        },
        validator: [1; 20],
        signature: [1; 64],
    }
}

#[test]
fn one_validator_cannot_fill_the_next_height_buffer() {
    let n = net(4);
    let mut core = n.core(None);
    core.handle(Input::StartHeight { height: 1 });
    // Validator 0 floods next-height votes for every round it can sign.
    for r in 0..5_000u32 {
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            core.handle(Input::Vote(n.vote(0, 2, r, kind, Some(C))));
        }
    }
    assert!(
        core.buffered() <= crate::machine::MAX_BUFFERED_PER_VALIDATOR,
        "one validator holds {} buffered messages",
        core.buffered()
    );
    // A vote from outside the set is not buffered at all.
    let stranger = Keypair::from_secret_bytes(&sha256(b"stranger")).unwrap();
    core.handle(Input::Vote(stranger.sign_vote(unsigned_vote(
        2,
        0,
        VoteKind::Prevote,
        Some(C),
    ))));
    let flooded = core.buffered();
    // The other validators' early votes still find room and count at height 2.
    for i in 1..4 {
        core.handle(Input::Vote(n.vote(i, 2, 0, VoteKind::Prevote, Some(B))));
    }
    assert_eq!(core.buffered(), flooded + 3);
}

#[test]
fn two_thirds_nil_precommits_start_the_next_round_at_once() {
    let n = net(4);
    let me = n.non_proposer();
    let o = n.others(me);
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    core.handle(fire(1, 0, TimeoutStep::Propose));
    for i in &o {
        core.handle(Input::Vote(n.vote(*i, 1, 0, VoteKind::Prevote, None)));
    }
    let pc = |i: usize, h: Option<Hash>| Input::Vote(n.vote(i, 1, 0, VoteKind::Precommit, h));
    run(
        &mut core,
        vec![
            row(pc(o[0], None), vec![]),
            // 2f+1 precommits, not all nil: wait out timeout_precommit (line 47), as late
            // precommits could still make a value reach 2f+1.
            row(pc(o[1], Some(B)), vec![]),
            row(pc(o[2], None), vec![timeout(1, 0, TimeoutStep::Precommit)]),
            // Our own nil precommit makes 2f+1 nil: round 1 starts without the timeout.
            row_s(
                pc(me, None),
                vec![
                    Output::RoundChanged {
                        height: 1,
                        round: 1,
                    },
                    timeout(1, 1, TimeoutStep::Propose),
                ],
                (1, Step::Propose, None),
            ),
            // The timeout of round 0 firing later changes nothing.
            row(fire(1, 0, TimeoutStep::Precommit), vec![]),
        ],
    );
}

/// Decides `h` from a peer commit signed by `signers` and starts `h + 1`; returns the
/// outputs of that `StartHeight`.
fn decide_by_commit(n: &Net, core: &mut Consensus, signers: &[usize], h: u64) -> Vec<Output> {
    let hash = sha256(&h.to_be_bytes());
    core.handle(Input::Commit(n.commit(signers, h, 0, hash)));
    core.handle(Input::BlockValidated {
        height: h,
        block_hash: hash,
        valid: true,
    });
    assert_eq!(core.step(), Step::Decided, "height {h} decided");
    core.handle(Input::StartHeight { height: h + 1 })
}

fn propose_timeout_ms(out: &[Output]) -> Option<u64> {
    out.iter().find_map(|o| match o {
        Output::ScheduleTimeout {
            timeout:
                Timeout {
                    step: TimeoutStep::Propose,
                    ..
                },
            duration_ms,
        } => Some(*duration_ms),
        _ => None,
    })
}

#[test]
fn a_proposer_silent_for_two_heights_gets_a_short_propose_timeout() {
    let n = net(4);
    let full = Timeouts::from(&Params::default()).duration_ms(TimeoutStep::Propose, 0);
    let absent = n.proposer(3, 0);
    let me = n.others(absent)[0];
    let without: Vec<usize> = n.others(absent);
    let everyone: Vec<usize> = (0..4).collect();

    // Negative control: the same validator signing every commit keeps its full timeout.
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    decide_by_commit(&n, &mut core, &everyone, 1);
    let out = decide_by_commit(&n, &mut core, &everyone, 2);
    assert_eq!(propose_timeout_ms(&out), Some(full));
    assert_eq!(core.absent_validators().count(), 0);

    // Silent at heights 1 and 2: its turn at height 3 times out after a tenth.
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    let out = decide_by_commit(&n, &mut core, &without, 1);
    if n.proposer(2, 0) == absent {
        assert_eq!(
            propose_timeout_ms(&out),
            Some(full),
            "one height is not enough"
        );
    }
    let out = decide_by_commit(&n, &mut core, &without, 2);
    assert_eq!(propose_timeout_ms(&out), Some(full / 10));
    let addr = n.keys[absent].address();
    assert_eq!(core.absent_validators().collect::<Vec<_>>(), vec![&addr]);

    // It is heard again (a vote of height 3): from height 4 on it counts as present.
    core.handle(Input::Vote(n.vote(absent, 3, 0, VoteKind::Prevote, None)));
    decide_by_commit(&n, &mut core, &without, 3);
    assert_eq!(core.absent_validators().count(), 0);
}

#[test]
fn our_own_turn_is_never_cut_short() {
    let n = net(4);
    let me = n.proposer(3, 0);
    let others = n.others(me);
    let full = Timeouts::from(&Params::default()).duration_ms(TimeoutStep::Propose, 0);
    // A node that never hears itself (its own votes were lost) still waits the full
    // timeout for its own proposal.
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    decide_by_commit(&n, &mut core, &others, 1);
    let out = decide_by_commit(&n, &mut core, &others, 2);
    assert_eq!(propose_timeout_ms(&out), Some(full));
}

#[test]
fn a_proposer_that_votes_but_missed_its_turn_gets_a_short_timeout_until_it_proposes() {
    let n = net(4);
    let full = Timeouts::from(&Params::default()).duration_ms(TimeoutStep::Propose, 0);
    // The proposer of height 1 round 0 signs every commit (it is heard) but lets its turn
    // time out.
    let p = n.proposer(1, 0);
    let me = n.others(p)[0];
    let everyone: Vec<usize> = (0..4).collect();
    let mut core = n.core(Some(me));
    core.handle(Input::StartHeight { height: 1 });
    core.handle(fire(1, 0, TimeoutStep::Propose));
    assert_eq!(
        core.absent_validators().collect::<Vec<_>>(),
        vec![&n.keys[p].address()]
    );
    let mut out = decide_by_commit(&n, &mut core, &everyone, 1);
    // Its next turn: a tenth.
    let h = (2..40).find(|h| n.proposer(*h, 0) == p).unwrap();
    for height in 2..h {
        out = decide_by_commit(&n, &mut core, &everyone, height);
    }
    assert_eq!(propose_timeout_ms(&out), Some(full / 10));
    // It proposes (late, even): from then on it has its full timeout again.
    core.handle(Input::Proposal(n.proposal(h, 0, None, B)));
    assert_eq!(core.absent_validators().count(), 0);
}

/// A set of the validators `members` of `n` (power 1 each).
fn subset(n: &Net, members: &[usize]) -> ValidatorSet {
    ValidatorSet::new(
        members
            .iter()
            .map(|i| Validator {
                address: n.keys[*i].address(),
                pubkey: n.keys[*i].public_key(),
                power: 1,
            })
            .collect(),
    )
    .unwrap()
}

/// A full node's core whose first set is `set`.
fn follower(set: &ValidatorSet) -> Consensus {
    Consensus::new(Config {
        chain_id: CHAIN.into(),
        validators: set.clone(),
        address: None,
        timeouts: Timeouts::from(&Params::default()),
    })
}

fn decided(out: &[Output]) -> Option<(u64, Hash)> {
    out.iter().find_map(|o| match o {
        Output::Decide {
            height, block_hash, ..
        } => Some((*height, *block_hash)),
        _ => None,
    })
}

/// Issue 20: the set changes between heights. Height 1 is decided by set A = {0,1,2,3};
/// height 2 by set B = {1,2,3,4}, where 4 joined and 0 left. At height 1 a vote of 4 does
/// not count and 4's proposal for height 2 (its turn in B) is kept for later; at height 2
/// 0's votes do not count, 4's early proposal is replayed, and B's quorum decides.
#[test]
fn each_height_follows_its_own_validator_set() {
    let n = net(5);
    let (a, b) = (subset(&n, &[0, 1, 2, 3]), subset(&n, &[1, 2, 3, 4]));
    let sign_in = |set: &ValidatorSet, h: u64, r: u32, hash: Hash| {
        let who = set.proposer(h, r).address;
        let i = n.keys.iter().position(|k| k.address() == who).unwrap();
        (
            i,
            n.keys[i].sign_proposal(unsigned_proposal(h, r, None, hash)),
        )
    };
    let mut core = follower(&a);
    core.handle(Input::ValidatorSets {
        height: 1,
        current: a.clone(),
        next: b.clone(),
    });
    core.handle(Input::StartHeight { height: 1 });
    // Height 2's proposal, early, from B's proposer of round 0; a next-height vote of 0
    // (in A, not in B) is not kept.
    let (i2, early) = sign_in(&b, 2, 0, C);
    core.handle(Input::Vote(n.vote(0, 2, 0, VoteKind::Prevote, Some(C))));
    assert_eq!(
        core.buffered(),
        0,
        "a next-height vote from outside B was kept"
    );
    core.handle(Input::Proposal(early));
    assert_eq!(
        core.buffered(),
        1,
        "validator {i2}'s next-height proposal is kept"
    );
    let (_, p1) = sign_in(&a, 1, 0, B);
    core.handle(Input::Proposal(p1));
    core.handle(Input::BlockValidated {
        height: 1,
        block_hash: B,
        valid: true,
    });
    // 4 is not in A: its precommit (with two of A's) is no quorum.
    let mut out = Vec::new();
    for i in [4, 1, 2] {
        out.extend(core.handle(Input::Vote(n.vote(i, 1, 0, VoteKind::Precommit, Some(B)))));
    }
    assert_eq!(
        decided(&out),
        None,
        "a vote from outside the height's set counted"
    );
    out = core.handle(Input::Vote(n.vote(3, 1, 0, VoteKind::Precommit, Some(B))));
    assert_eq!(decided(&out), Some((1, B)));
    // Height 2, set B (announced as the next set, so no new announcement is needed).
    core.handle(Input::StartHeight { height: 2 });
    core.handle(Input::BlockValidated {
        height: 2,
        block_hash: C,
        valid: true,
    });
    out.clear();
    for i in [0, 1, 2] {
        out.extend(core.handle(Input::Vote(n.vote(i, 2, 0, VoteKind::Precommit, Some(C)))));
    }
    assert_eq!(decided(&out), None, "0 left the set: its vote counted");
    out = core.handle(Input::Vote(n.vote(4, 2, 0, VoteKind::Precommit, Some(C))));
    assert_eq!(
        decided(&out),
        Some((2, C)),
        "the early proposal and B's quorum decide"
    );
    assert_eq!(core.absent_validators().count(), 0);
}

/// A chain that never announces a set keeps `Config::validators` for every height, and an
/// announcement for a later height waits for it.
#[test]
fn without_announcements_the_configured_set_stays_and_a_later_one_waits() {
    let n = net(5);
    let (a, b) = (subset(&n, &[0, 1, 2, 3]), subset(&n, &[1, 2, 3, 4]));
    let mut core = follower(&a);
    core.handle(Input::ValidatorSets {
        height: 3,
        current: b.clone(),
        next: b.clone(),
    });
    for h in 1..=2 {
        core.handle(Input::StartHeight { height: h });
        core.handle(Input::BlockValidated {
            height: h,
            block_hash: B,
            valid: true,
        });
        let mut out = Vec::new();
        for i in [0, 1, 2] {
            out.extend(core.handle(Input::Vote(n.vote(i, h, 0, VoteKind::Precommit, Some(B)))));
        }
        assert_eq!(decided(&out), Some((h, B)), "height {h} uses A");
    }
    core.handle(Input::StartHeight { height: 3 });
    core.handle(Input::BlockValidated {
        height: 3,
        block_hash: B,
        valid: true,
    });
    let mut out = Vec::new();
    for i in [0, 1, 2] {
        out.extend(core.handle(Input::Vote(n.vote(i, 3, 0, VoteKind::Precommit, Some(B)))));
    }
    assert_eq!(decided(&out), None, "height 3 uses B, where 0 is not");
}
