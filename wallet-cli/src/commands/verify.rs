//! `tally balance --verify --genesis genesis.json`: trust the genesis validator set, not
//! the node. The chain of checks: the commit for height H carries > 2/3 of the genesis
//! validators' power for block hash B; B is the hash of the header the node sent; the
//! account proof verifies against that header's state root.

use std::path::Path;

use ledger::genesis::Genesis;
use ledger::hash::from_hex_array;
use ledger::state::AccountProof;
use ledger::types::{Account, Address, Block, Commit, CommitSig};
use serde_json::json;

use crate::context::Ctx;
use crate::error::{Error, Result};
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
    pub validators: usize,
}

fn failed(what: impl std::fmt::Display) -> Error {
    Error::failure(format!("verification FAILED: {what}"))
}

/// Fetches the account with its proof and the block at the same height, and checks both
/// against `genesis`. The tip may move between the two requests: if the state roots
/// differ the pair is fetched once more.
pub async fn verify_account(
    client: &NodeClient,
    genesis: &Genesis,
    address: Address,
) -> Result<Verified> {
    let mut attempt = 0;
    loop {
        let acct = client.account(&address, true).await?;
        if acct.height == 0 {
            return Err(failed(
                "the chain has no committed block yet, so there is no commit to check; try again after the first block",
            ));
        }
        let info = client.block(Some(acct.height)).await?;
        let block = decode_block(&info)?;
        let header_root = hex::encode(block.header.state_root);
        if header_root != acct.state_root.to_ascii_lowercase() && attempt == 0 {
            attempt += 1;
            continue;
        }
        return check(genesis, address, acct, &info, &block);
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

fn decode_block(info: &BlockInfo) -> Result<Block> {
    let hex_block = info.block.as_deref().ok_or_else(|| {
        failed(format!(
            "the node did not include the raw block for height {} (field \"block\"); it is needed to recompute the hash",
            info.height
        ))
    })?;
    let bytes = hex::decode(hex_block).map_err(|e| failed(format!("block hex: {e}")))?;
    ledger::codec::decode::<Block>("block", &bytes, 64 << 20).map_err(failed)
}

fn check(
    genesis: &Genesis,
    address: Address,
    acct: AccountInfo,
    info: &BlockInfo,
    block: &Block,
) -> Result<Verified> {
    let header = &block.header;
    let vs = genesis.validator_set();
    if header.chain_id != genesis.chain_id {
        return Err(failed(format!(
            "the node serves chain \"{}\" but the genesis file is for \"{}\"; pass the right --genesis or --node",
            header.chain_id, genesis.chain_id
        )));
    }
    if header.height != acct.height {
        return Err(failed(format!(
            "asked for the block at height {}, the node sent height {}",
            acct.height, header.height
        )));
    }
    let hash = header.hash();
    if !info.hash.eq_ignore_ascii_case(&hex::encode(hash)) {
        return Err(failed(format!(
            "the node says block {} has hash {}, but its header hashes to {}",
            header.height,
            info.hash,
            hex::encode(hash)
        )));
    }
    let commit = info
        .commit
        .as_ref()
        .ok_or_else(|| {
            failed(format!(
                "the node has no commit for height {} yet; try again in a moment",
                header.height
            ))
        })
        .and_then(|c| to_commit(c).map_err(failed))?;
    vs.verify_commit(&genesis.chain_id, header.height, &hash, &commit)
        .map_err(|e| {
            failed(format!(
                "the commit for height {} is not valid for the genesis validators: {e}",
                header.height
            ))
        })?;
    if header.validators_hash != vs.hash() {
        return Err(failed(format!(
            "block {} names validator set {}, the genesis set hashes to {}",
            header.height,
            hex::encode(header.validators_hash),
            hex::encode(vs.hash())
        )));
    }
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
        block_hash: hex::encode(hash),
        state_root: hex::encode(header.state_root),
        signers: commit.signatures.len(),
        validators: vs.len(),
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
    });
    ctx.emit(&value, || {
        format!(
            "verified: {}{} has balance {} and nonce {} at height {}\nblock {} committed by {} of {} genesis validators; account proven against state root {}",
            hex::encode(address),
            name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            v.account.balance,
            v.account.nonce,
            v.height,
            v.block_hash,
            v.signers,
            v.validators,
            v.state_root
        )
    });
    Ok(())
}
