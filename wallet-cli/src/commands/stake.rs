//! Protocol 2's staking from the wallet: `tally stake bond|unbond|unjail` sign and follow
//! their transactions as `send` does ([`super::transfer::submit`]); `tally validators`,
//! `tally validator` and `tally staking` read the node's set and staking routes.
//!
//! On a protocol-1 chain the node refuses the three payloads with `unsupported_payload`
//! (exit 4, with a hint), and the read commands show the genesis set and no stake.

use ledger::types::Payload;
use serde_json::json;

use crate::cli::StakeCommand;
use crate::context::Ctx;
use crate::error::{Error, Result};

pub async fn run(ctx: &Ctx, cmd: StakeCommand) -> Result<()> {
    let (action, payload, tx, amount) = match cmd {
        StakeCommand::Bond(a) => (
            "bond",
            Payload::Bond {
                validator: a.validator,
                amount: a.amount,
            },
            a.tx,
            Some(a.amount),
        ),
        StakeCommand::Unbond(a) => (
            "unbond",
            Payload::Unbond {
                validator: a.validator,
                amount: a.amount,
            },
            a.tx,
            Some(a.amount),
        ),
        StakeCommand::Unjail(a) => (
            "unjail",
            Payload::Unjail {
                validator: a.validator,
            },
            a.tx,
            None,
        ),
    };
    let validator = match &payload {
        Payload::Bond { validator, .. }
        | Payload::Unbond { validator, .. }
        | Payload::Unjail { validator } => hex::encode(validator),
        Payload::Transfer { .. } => String::new(),
    };
    let mut fields = json!({ "action": action, "validator": validator });
    if let Some(amount) = amount {
        fields["amount"] = json!(amount);
    }
    let result = super::transfer::submit(
        ctx,
        super::transfer::Submission {
            tx: &tx,
            payload,
            fields,
        },
    )
    .await?;
    let tx_id = result["tx_id"].as_str().unwrap_or_default();
    if ctx.json() {
        println!("{result}");
        return Ok(());
    }
    ctx.say(format!("tx {tx_id}"));
    // What the committed tx means for the set: it is computed at the end of each block
    // for the height after next.
    if let Some(h) = result["height"].as_u64() {
        let short = &validator[..16];
        ctx.say(match action {
            "bond" => format!(
                "bonded {} to {short}…; the set of height {} counts it if the validator qualifies (unjailed, min stake): 'tally validators --height {}'",
                amount.unwrap_or(0),
                h + 2,
                h + 2
            ),
            "unbond" => format!(
                "unbonding {} from {short}…; it is paid back after the chain's unbonding period: 'tally staking {}'",
                amount.unwrap_or(0),
                tx.from
            ),
            _ => format!(
                "{short}… unjailed; it is back in the set of height {} if its stake qualifies",
                h + 2
            ),
        });
    }
    Ok(())
}

/// `tally validators [--height H]`.
pub async fn validators(ctx: &Ctx, height: Option<u64>) -> Result<()> {
    let client = ctx.client()?;
    let v = client.validators(height).await?;
    let value = to_value(&v)?;
    ctx.emit(&value, || {
        let name_of = |address: &str| {
            v.validators
                .iter()
                .find(|x| x.address == address)
                .map(|x| {
                    if x.name.is_empty() {
                        address[..8].to_string()
                    } else {
                        x.name.clone()
                    }
                })
                .unwrap_or_else(|| address.chars().take(8).collect())
        };
        let width = v
            .validators
            .iter()
            .map(|x| x.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let mut out = format!(
            "validator set of height {} (protocol {}): {} validators, total power {}\nset hash    {}\n{:<width$} {:<40} {:>8} {:>7}  pubkey",
            v.height,
            v.protocol_version,
            v.validators.len(),
            v.total_power,
            v.validators_hash,
            "name",
            "address",
            "power",
            "share",
        );
        for x in &v.validators {
            let share = if v.total_power == 0 {
                0.0
            } else {
                100.0 * x.power as f64 / v.total_power as f64
            };
            out.push_str(&format!(
                "\n{:<width$} {:<40} {:>8} {:>6.1}%  {}",
                if x.name.is_empty() { "-" } else { &x.name },
                x.address,
                x.power,
                share,
                x.pubkey
            ));
        }
        if !v.proposers.is_empty() {
            let order: Vec<String> = v.proposers.iter().map(|a| name_of(a)).collect();
            out.push_str(&format!(
                "\nproposers   rounds 0..{}: {}",
                v.proposers.len() - 1,
                order.join(", ")
            ));
        }
        out
    });
    Ok(())
}

/// `tally validator <key>`.
pub async fn validator(ctx: &Ctx, key: [u8; 33]) -> Result<()> {
    let client = ctx.client()?;
    let v = client.validator(&key).await?;
    let value = to_value(&v)?;
    ctx.emit(&value, || {
        format!(
            "validator {}{}\naddress     {}\nstake       {}\njailed      {}\nmissed      {}\nin the set  {}\nat height   {}",
            v.pubkey,
            if v.name.is_empty() { String::new() } else { format!(" ({})", v.name) },
            v.address,
            v.stake
                .map_or("- (protocol 1 has no stake)".to_string(), |n| n.to_string()),
            match v.jailed_until_height {
                0 => "no".to_string(),
                h => format!("yes, until height {h} (then an operator's 'tally stake unjail')"),
            },
            v.consecutive_missed.map_or(
                "- (not tracked on protocol 1)".to_string(),
                |n| format!("{n} commits in a row")
            ),
            if v.in_set {
                format!("yes, power {} (height {})", v.power, v.height + 1)
            } else {
                format!("no (height {})", v.height + 1)
            },
            v.height,
        )
    });
    Ok(())
}

/// `tally staking <address|name>`.
pub async fn staking(ctx: &Ctx, account: &str) -> Result<()> {
    let (address, name) = ctx.resolve_account(account)?;
    let client = ctx.client()?;
    let st = client.staking(&address).await?;
    let mut value = to_value(&st)?;
    value["name"] = json!(name);
    ctx.emit(&value, || {
        let mut out = format!(
            "staking of {}{} at height {}\nbonded      {} in {} bond(s)",
            st.address,
            name.as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            st.height,
            st.total_bonded,
            st.bonds.len()
        );
        for b in &st.bonds {
            out.push_str(&format!("\n  {:>12}  to {}", b.amount, b.validator));
        }
        out.push_str(&format!(
            "\nunbonding   {} in {} entr{}",
            st.total_unbonding,
            st.unbonding.len(),
            if st.unbonding.len() == 1 { "y" } else { "ies" }
        ));
        for u in &st.unbonding {
            out.push_str(&format!(
                "\n  {:>12}  paid back at the end of height {}, from {}",
                u.amount, u.release_height, u.validator
            ));
        }
        out
    });
    Ok(())
}

fn to_value(v: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::failure(format!("cannot encode the answer: {e}")))
}
