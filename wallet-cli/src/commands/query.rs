//! Read-only commands: `balance`, `tx`, `status`, `block`.

use serde_json::json;
use tally_api::TxState;

use crate::cli::BalanceArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::input::BlockRef;

pub async fn balance(ctx: &Ctx, args: BalanceArgs) -> Result<()> {
    let (address, name) = ctx.resolve_account(&args.account)?;
    let client = ctx.client()?;
    if args.verify {
        let genesis = args
            .genesis
            .as_deref()
            .ok_or_else(|| Error::usage("--verify needs --genesis <genesis.json>"))?;
        return super::verify::run(ctx, &client, address, name, genesis).await;
    }
    let acct = client.account(&address, false).await?;
    let mut value = serde_json::to_value(&acct)
        .map_err(|e| Error::failure(format!("cannot encode the answer: {e}")))?;
    value["name"] = json!(name);
    value["next_nonce"] = json!(acct.next_nonce());
    ctx.emit(&value, || {
        format!(
            "{}{}\nbalance     {}\nnonce       {} (next to use: {})\nat height   {}",
            hex::encode(address),
            name.as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            acct.balance,
            acct.nonce,
            acct.next_nonce(),
            acct.height
        )
    });
    Ok(())
}

pub async fn tx(ctx: &Ctx, id: [u8; 32]) -> Result<()> {
    let client = ctx.client()?;
    let st = client.tx(&id).await?;
    let value = serde_json::to_value(&st)
        .map_err(|e| Error::failure(format!("cannot encode the answer: {e}")))?;
    ctx.emit(&value, || match st.status {
        TxState::Committed => format!(
            "tx {}\nstatus      committed (final)\nblock       {} (index {})\nblock hash  {}",
            st.tx_id,
            st.height.map_or("?".to_string(), |h| h.to_string()),
            st.index.map_or("?".to_string(), |i| i.to_string()),
            st.block_hash.as_deref().unwrap_or("?")
        ),
        TxState::Pending => format!("tx {}\nstatus      pending (in the mempool, not yet in a block)", st.tx_id),
        TxState::Unknown => format!(
            "tx {}\nstatus      unknown (this node has not seen it; it may have been dropped or sent to another chain)",
            st.tx_id
        ),
    });
    Ok(())
}

pub async fn status(ctx: &Ctx) -> Result<()> {
    let client = ctx.client()?;
    let value = client.get_json("/v1/status").await?;
    let st: tally_api::Status = serde_json::from_value(value.clone()).map_err(|e| {
        Error::failure(format!(
            "node at {} sent a status this tally does not understand ({e})",
            client.url()
        ))
    })?;
    ctx.emit(&value, || {
        let halted = st
            .halted
            .as_ref()
            .map_or(String::new(), |r| format!("\nHALTED      {r}"));
        format!(
            "node        {} ({})\nchain       {}\nheight      {}{}\ntip         {}\nvalidator   {}\nround       {}\npeers       {}\nmempool     {} txs, {} bytes\nmin fee     {}{}",
            client.url(),
            if st.moniker.is_empty() { st.node_id.as_str() } else { st.moniker.as_str() },
            st.chain_id,
            st.height,
            if st.catching_up { " (catching up)" } else { "" },
            st.tip_hash,
            match (&st.validator, &st.validator_address) {
                (true, Some(a)) => format!("yes ({a})"),
                (true, None) => "yes".to_string(),
                _ => "no (full node)".to_string(),
            },
            st.round,
            st.peers,
            st.mempool.txs,
            st.mempool.bytes,
            st.min_fee,
            halted
        )
    });
    Ok(())
}

pub async fn block(ctx: &Ctx, at: BlockRef) -> Result<()> {
    let client = ctx.client()?;
    let height = match at {
        BlockRef::Latest => None,
        BlockRef::Height(h) => Some(h),
    };
    let b = client.block(height).await?;
    let mut value = serde_json::to_value(&b)
        .map_err(|e| Error::failure(format!("cannot encode the answer: {e}")))?;
    // The raw block is for verification, and the previous block's commit is that block's
    // business; scripts that want them can ask the node.
    if let Some(obj) = value.as_object_mut() {
        obj.remove("block");
        obj.remove("last_commit");
    }
    ctx.emit(&value, || {
        let h = &b.header;
        let mut out = format!(
            "block {}\nhash        {}\nchain       {}\nround       {}\ntime_ms     {}\nprev        {}\nstate root  {}\nproposer    {}\ntxs         {}",
            b.height,
            b.hash,
            h.chain_id,
            h.round,
            h.time_ms,
            h.prev_hash,
            h.state_root,
            h.proposer,
            b.tx_ids.len()
        );
        for id in &b.tx_ids {
            out.push_str(&format!("\n  {id}"));
        }
        match &b.commit {
            Some(c) => out.push_str(&format!(
                "\ncommit      round {}, {} signatures",
                c.round,
                c.signatures.len()
            )),
            None => out.push_str("\ncommit      (not available yet)"),
        }
        out
    });
    Ok(())
}
