//! Parsing what a user types: amounts, addresses, transaction ids, heights, durations.
//! Every parser returns a message that names the bad value and the expected form, so clap
//! can print it as a one-line usage error.

use std::time::Duration;

use ledger::types::Address;

/// An amount or fee: a whole number of base units, `_` allowed as a digit separator.
pub fn parse_amount(text: &str) -> Result<u64, String> {
    let cleaned: String = text.trim().chars().filter(|c| *c != '_').collect();
    if cleaned.is_empty() {
        return Err("amount is empty; give a whole number of base units, e.g. 1000".into());
    }
    if cleaned.starts_with('-') {
        return Err(format!(
            "\"{text}\" is negative; amounts are whole numbers >= 0"
        ));
    }
    if !cleaned.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "\"{text}\" is not a whole number of base units (digits only, e.g. 1000; no decimals or units)"
        ));
    }
    cleaned
        .parse::<u64>()
        .map_err(|_| format!("\"{text}\" is too large; the maximum is {}", u64::MAX))
}

/// Like [`parse_amount`] but zero is refused (a transfer of 0 is invalid on chain).
pub fn parse_positive_amount(text: &str) -> Result<u64, String> {
    match parse_amount(text)? {
        0 => Err("amount must be greater than zero".into()),
        n => Ok(n),
    }
}

/// Whether `text` has the shape of an address (40 hex chars, optional 0x).
pub fn looks_like_address(text: &str) -> bool {
    let t = text.strip_prefix("0x").unwrap_or(text);
    t.len() == 40 && t.chars().all(|c| c.is_ascii_hexdigit())
}

pub fn parse_address(text: &str) -> Result<Address, String> {
    ledger::hash::from_hex_array::<20>(&text.to_ascii_lowercase())
        .map_err(|e| format!("\"{text}\" is not an address ({e}); an address is 40 hex characters"))
}

pub fn parse_tx_id(text: &str) -> Result<[u8; 32], String> {
    ledger::hash::from_hex_array::<32>(&text.to_ascii_lowercase()).map_err(|e| {
        format!("\"{text}\" is not a transaction id ({e}); a tx id is 64 hex characters")
    })
}

/// `latest` or a block height >= 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRef {
    Latest,
    Height(u64),
}

pub fn parse_block_ref(text: &str) -> Result<BlockRef, String> {
    if text.eq_ignore_ascii_case("latest") {
        return Ok(BlockRef::Latest);
    }
    match text.parse::<u64>() {
        Ok(0) => Err("height 0 is the genesis state and has no block; heights start at 1".into()),
        Ok(h) => Ok(BlockRef::Height(h)),
        Err(_) => Err(format!(
            "\"{text}\" is not a block height; give a number >= 1 or \"latest\""
        )),
    }
}

/// A block height >= 1 (no "latest").
pub fn parse_height(text: &str) -> Result<u64, String> {
    match parse_block_ref(text)? {
        BlockRef::Height(h) => Ok(h),
        BlockRef::Latest => Err(format!(
            "\"{text}\" is not a block height; give a number >= 1"
        )),
    }
}

/// A validator's consensus key: 66 hex characters (optional 0x) of a compressed
/// secp256k1 point. Checked here, so a typo is a usage error rather than a tx the node
/// refuses after the wallet unlocked the key.
pub fn parse_validator_key(text: &str) -> Result<[u8; 33], String> {
    let key =
        ledger::hash::from_hex_array::<33>(&text.trim().to_ascii_lowercase()).map_err(|e| {
            format!(
                "\"{text}\" is not a validator key ({e}); a consensus key is 66 hex characters \
             (33 bytes, compressed secp256k1); see 'tally validators'"
            )
        })?;
    ledger::crypto::parse_public_key(&key).map_err(|_| {
        format!(
            "\"{text}\" is not a compressed secp256k1 key (33 bytes starting 02 or 03, on the \
             curve); see 'tally validators'"
        )
    })?;
    Ok(key)
}

/// A duration: `30`, `30s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration; use e.g. 30s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("\"{text}\" has an unknown unit; use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 7.0 * 24.0 * 3600.0 {
        return Err(format!(
            "\"{text}\" is out of range; give a positive duration up to a week"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A keystore key name: what the file is called, so it must be a safe file name.
pub fn validate_key_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a valid key name; use 1-64 letters, digits, '-', '_' or '.' (not starting with '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("1000"), Ok(1000));
        assert_eq!(parse_amount("1_000_000"), Ok(1_000_000));
        assert_eq!(parse_amount("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "abc",
            "1.5",
            "-3",
            "10tly",
            "18446744073709551616",
            "1e3",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_positive_amount("0").is_err());
    }

    #[test]
    fn addresses_and_ids() {
        let a = "2378b50dae7d4a9a336cb1b72832db240816988d";
        assert!(looks_like_address(a));
        assert!(parse_address(&a.to_uppercase()).is_ok());
        assert!(parse_address("0x2378b50dae7d4a9a336cb1b72832db240816988d").is_ok());
        assert!(parse_address("2378b5").is_err());
        assert!(parse_address("zz78b50dae7d4a9a336cb1b72832db240816988d").is_err());
        assert!(parse_tx_id(a).is_err());
    }

    #[test]
    fn durations_and_heights() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_block_ref("latest"), Ok(BlockRef::Latest));
        assert_eq!(parse_block_ref("7"), Ok(BlockRef::Height(7)));
        assert!(parse_block_ref("0").is_err());
        assert!(parse_block_ref("-1").is_err());
        assert_eq!(parse_height("12"), Ok(12));
        assert!(parse_height("latest").is_err());
        assert!(parse_height("0").is_err());
    }

    #[test]
    fn validator_keys() {
        let key = ledger::crypto::Keypair::from_secret_bytes(&[7; 32])
            .unwrap()
            .public_key();
        let text = hex::encode(key);
        assert_eq!(parse_validator_key(&text), Ok(key));
        assert_eq!(
            parse_validator_key(&format!("0x{}", text.to_uppercase())),
            Ok(key)
        );
        let short = parse_validator_key(&text[..64]).unwrap_err();
        assert!(short.contains("66 hex characters"), "{short}");
        // The right length, not a compressed point: the prefix must be 02 or 03.
        let off = parse_validator_key(&format!("04{}", &text[2..])).unwrap_err();
        assert!(off.contains("not a compressed secp256k1 key"), "{off}");
        assert!(parse_validator_key("zz").is_err());
    }

    #[test]
    fn key_names() {
        assert!(validate_key_name("alice-1.test").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "sp ace"] {
            assert!(validate_key_name(bad).is_err());
        }
    }
}
