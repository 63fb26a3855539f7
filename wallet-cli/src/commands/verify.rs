//! `tally balance --verify --genesis genesis.json`: trust the genesis file, not the node.
//! The light client ([`crate::light`]) follows the validator set from genesis to the
//! height of the answer (protocol 1: the genesis set, checked once); the header it
//! verifies commits to a state root; the account proof verifies against that root.

use std::path::Path;

use ledger::genesis::Genesis;
use ledger::hash::from_hex_array;
use ledger::state::AccountProof;
use ledger::types::{Account, Address, Block, Commit, CommitSig, Header, Validator};
use ledger::validators::ValidatorSet;
use serde_json::json;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::light::{LightClient, SignedHeader, Source, Stats};
use crate::rpc::NodeClient;
use tally_api::{Account as AccountInfo, Block as BlockInfo};

/// What a successful verification established.
#[derive(Debug, Clone)]
pub struct Verified {
    pub account: AccountInfo,
    pub height: u64,
    pub block_hash: String,
    pub state_root: String,
    pub signers: usize,
    /// The size of the set that signed `height`.
    pub validators: usize,
    pub protocol: u32,
    pub light: Stats,
}

fn failed(what: impl std::fmt::Display) -> Error {
    Error::failure(format!("verification FAILED: {what}"))
}

/// The node's RPC as the light client's [`Source`]: every answer is decoded here and
/// checked there.
struct RpcSource<'a> {
    client: &'a NodeClient,
}

impl Source for RpcSource<'_> {
    async fn signed_header(&mut self, height: u64) -> Result<SignedHeader, String> {
        let info = self
            .client
            .block(Some(height))
            .await
            .map_err(|e| e.to_string())?;
        let block = decode_block(&info)?;
        let hash = hex::encode(block.header.hash());
        if !info.hash.eq_ignore_ascii_case(&hash) {
            return Err(format!(
                "the node says block {} has hash {}, but its header hashes to {hash}",
                info.height, info.hash
            ));
        }
        let commit = info.commit.as_ref().ok_or_else(|| {
            format!("the node has no commit for height {height} yet; try again in a moment")
        })?;
        Ok(SignedHeader {
            header: block.header,
            commit: to_commit(commit)?,
        })
    }

    async fn validator_set(&mut self, height: u64) -> Result<ValidatorSet, String> {
        let answer = self
            .client
            .validators(Some(height))
            .await
            .map_err(|e| e.to_string())?;
        if answer.height != 0 && answer.height != height {
            return Err(format!(
                "asked for the set of height {height}, the node sent the set of height {}",
                answer.height
            ));
        }
        to_set(&answer)
    }
}

/// The ledger's set of the API's `/v1/validators` answer, in the order it was sent.
fn to_set(answer: &tally_api::Validators) -> Result<ValidatorSet, String> {
    let validators = answer
        .validators
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(Validator {
                address: from_hex_array::<20>(&v.address)
                    .map_err(|e| format!("validators[{i}].address: {e}"))?,
                pubkey: from_hex_array::<33>(&v.pubkey)
                    .map_err(|e| format!("validators[{i}].pubkey: {e}"))?,
                power: v.power,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    ValidatorSet::new(validators)
        .map_err(|e| format!("validator set of height {}: {e}", answer.height))
}

/// Fetches the account with its proof, verifies the header of its height with the light
/// client from `genesis`, and checks the proof against that header's state root. The tip
/// may move between the account and the header: if the state roots differ the account is
/// fetched once more.
pub async fn verify_account(
    client: &NodeClient,
    genesis: &Genesis,
    address: Address,
) -> Result<Verified> {
    let protocol = genesis.params.protocol_version;
    let mut light =
        LightClient::from_genesis(&genesis.chain_id, protocol, genesis.validator_set().clone());
    let mut source = RpcSource { client };
    let mut attempt = 0;
    loop {
        let acct = client.account(&address, true).await?;
        if acct.height == 0 {
            return Err(failed(
                "the chain has no committed block yet, so there is no commit to check; try again after the first block",
            ));
        }
        let header = match light.trusted() {
            (h, Some(header)) if h == acct.height => header.clone(),
            (h, _) if h < acct.height => light
                .verify_to(&mut source, acct.height)
                .await
                .map_err(failed)?,
            _ => {
                // The node answered at a lower height than before: start over from genesis.
                light = LightClient::from_genesis(
                    &genesis.chain_id,
                    protocol,
                    genesis.validator_set().clone(),
                );
                light
                    .verify_to(&mut source, acct.height)
                    .await
                    .map_err(failed)?
            }
        };
        if !acct
            .state_root
            .eq_ignore_ascii_case(&hex::encode(header.state_root))
            && attempt == 0
        {
            attempt += 1;
            continue;
        }
        return check(acct, address, &header, protocol, &light);
    }
}

/// The ledger's commit of the API's (hex strings to bytes).
fn to_commit(c: &tally_api::Commit) -> Result<Commit, String> {
    let signatures = c
        .signatures
        .iter()
        .map(|s| {
            Ok(CommitSig {
                validator: from_hex_array::<20>(&s.validator)
                    .map_err(|e| format!("commit signature validator: {e}"))?,
                signature: from_hex_array::<64>(&s.signature)
                    .map_err(|e| format!("commit signature: {e}"))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Commit {
        height: c.height,
        round: c.round,
        block_hash: from_hex_array::<32>(&c.block_hash)
            .map_err(|e| format!("commit block_hash: {e}"))?,
        signatures,
    })
}

fn decode_block(info: &BlockInfo) -> Result<Block, String> {
    let hex_block = info.block.as_deref().ok_or_else(|| {
        format!(
            "the node did not include the raw block for height {} (field \"block\"); it is needed to recompute the hash",
            info.height
        )
    })?;
    let bytes = hex::decode(hex_block).map_err(|e| format!("block hex: {e}"))?;
    ledger::codec::decode::<Block>("block", &bytes, 64 << 20).map_err(|e| e.to_string())
}

fn check(
    acct: AccountInfo,
    address: Address,
    header: &Header,
    protocol: u32,
    light: &LightClient,
) -> Result<Verified> {
    if !acct
        .state_root
        .eq_ignore_ascii_case(&hex::encode(header.state_root))
    {
        return Err(failed(format!(
            "the account was answered at state root {}, but block {} commits to {}",
            acct.state_root,
            header.height,
            hex::encode(header.state_root)
        )));
    }
    let proof_hex = acct
        .proof
        .as_deref()
        .ok_or_else(|| failed("the node did not send an account proof (field \"proof\")"))?;
    let proof_bytes = hex::decode(proof_hex).map_err(|e| failed(format!("proof hex: {e}")))?;
    let proof = AccountProof::from_bytes(&proof_bytes).map_err(failed)?;
    let exists = acct.exists.unwrap_or(acct.balance != 0 || acct.nonce != 0);
    let claimed = Account {
        balance: acct.balance,
        nonce: acct.nonce,
    };
    if !exists && (acct.balance != 0 || acct.nonce != 0) {
        return Err(failed(
            "the node says the account does not exist but reports a balance or nonce",
        ));
    }
    proof
        .verify(&header.state_root, &address, exists.then_some(&claimed))
        .map_err(|e| {
            failed(format!(
                "balance {} / nonce {} is not proven by state root {}: {e}",
                acct.balance,
                acct.nonce,
                hex::encode(header.state_root)
            ))
        })?;
    Ok(Verified {
        height: header.height,
        block_hash: hex::encode(header.hash()),
        state_root: hex::encode(header.state_root),
        signers: light.trusted_signers(),
        validators: light.trusted_set().len(),
        protocol,
        light: light.stats(),
        account: acct,
    })
}

pub async fn run(
    ctx: &Ctx,
    client: &NodeClient,
    address: Address,
    name: Option<String>,
    genesis_path: &Path,
) -> Result<()> {
    let genesis = Genesis::load(genesis_path).map_err(|e| Error::failure(e.to_string()))?;
    let v = verify_account(client, &genesis, address).await?;
    let l = v.light;
    let value = json!({
        "verified": true,
        "address": hex::encode(address),
        "name": name,
        "balance": v.account.balance,
        "nonce": v.account.nonce,
        "exists": v.account.exists,
        "height": v.height,
        "block_hash": v.block_hash,
        "state_root": v.state_root,
        "commit_signers": v.signers,
        "validators": v.validators,
        "protocol_version": v.protocol,
        "headers_verified": l.headers,
        "skipped": l.skips > 0,
        "skips": l.skips,
        "bisections": l.bisections,
        "sets_fetched": l.sets_fetched,
    });
    ctx.emit(&value, || {
        let whose = if v.protocol >= ledger::types::PROTOCOL_2 {
            format!("validators of height {}", v.height)
        } else {
            "genesis validators".to_string()
        };
        let light = if v.protocol >= ledger::types::PROTOCOL_2 {
            let how = if l.skips > 0 {
                format!(
                    "skipped ahead {} time(s) after {} bisection(s)",
                    l.skips, l.bisections
                )
            } else {
                "header by header, no skip".to_string()
            };
            format!(
                "{} header(s) verified from genesis, {how}; {} validator set(s) fetched, each checked against a verified header",
                l.headers, l.sets_fetched
            )
        } else {
            "protocol 1, the genesis set signs every height: 1 header verified".to_string()
        };
        format!(
            "verified: {}{} has balance {} and nonce {} at height {}\nblock {} committed by {} of {} {whose}; account proven against state root {}\nlight client: {light}",
            hex::encode(address),
            name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            v.account.balance,
            v.account.nonce,
            v.height,
            v.block_hash,
            v.signers,
            v.validators,
            v.state_root,
        )
    });
    Ok(())
}
