//! What a node announces about its software in identify's agent version, and how a peer's
//! announcement is read: `tally/<version> protocols <lowest>-<highest>`, e.g.
//! `tally/0.1.0 protocols 1-2`.
//!
//! The chain protocols a binary runs go in the agent, not in identify's protocol version:
//! that one (`/tally/<chain_id>/1`) is compared for equality and a peer announcing another
//! is disconnected as a node of another network, so a new binary changing it would be cut
//! off from the old ones in the middle of a rolling upgrade. Releases before this
//! announce `tally/<version>` alone: their highest protocol is unknown (`None`).
//!
//! The peer chooses the string, so everything here is bounded: the kept agent is
//! printable ASCII of at most [`MAX_AGENT_LEN`] characters, a version at most
//! [`MAX_VERSION_LEN`] characters of `[0-9A-Za-z.+-]`, protocols at most
//! [`MAX_ANNOUNCED_PROTOCOL`]. Anything else reads as `None`, never as an error.

use std::ops::RangeInclusive;

/// Longest agent string kept for a peer.
pub const MAX_AGENT_LEN: usize = 64;
/// Longest software version read out of an agent.
pub const MAX_VERSION_LEN: usize = 32;
/// Highest protocol number believed from a peer; a larger one is garbage.
pub const MAX_ANNOUNCED_PROTOCOL: u32 = 1000;

/// A peer's software as its identify agent says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Software {
    /// The announced agent as we keep and show it ([`agent_of`]).
    pub agent: String,
    /// `<version>` of `tally/<version>`; `None` for an agent of another form.
    pub version: Option<String>,
    /// The highest chain protocol the peer's binary runs; `None` when not announced
    /// (releases before protocol announcements) or not readable.
    pub max_protocol: Option<u32>,
}

/// Our own agent: `tally/<crate version> protocols <lowest>-<highest>`.
pub fn announce(version: &str, protocols: &RangeInclusive<u32>) -> String {
    format!(
        "tally/{version} protocols {}-{}",
        protocols.start(),
        protocols.end()
    )
}

/// A peer's announced agent, as we keep and show it: printable ASCII only, at most
/// [`MAX_AGENT_LEN`] characters (the peer chooses it).
pub fn agent_of(announced: &str) -> String {
    announced
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_AGENT_LEN)
        .collect()
}

impl Software {
    /// Reads a peer's announced agent (see the module doc for the grammar).
    pub fn parse(announced: &str) -> Self {
        let agent = agent_of(announced);
        let (version, max_protocol) = match announced.strip_prefix("tally/") {
            Some(rest) => match rest.split_once(' ') {
                None => (version_of(rest), None),
                Some((v, protocols)) => match (version_of(v), highest_of(protocols)) {
                    (Some(v), Some(max)) => (Some(v), Some(max)),
                    // A tally agent whose protocols part is not ours: not believed at all.
                    _ => (None, None),
                },
            },
            None => (None, None),
        };
        Software {
            agent,
            version,
            max_protocol,
        }
    }
}

fn version_of(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_VERSION_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    ok.then(|| s.to_string())
}

/// `protocols <lowest>-<highest>` with 1 <= lowest <= highest <= MAX_ANNOUNCED_PROTOCOL.
fn highest_of(s: &str) -> Option<u32> {
    let (lo, hi) = s.strip_prefix("protocols ")?.split_once('-')?;
    let number = |n: &str| {
        // Digits only: `u32::from_str` would also take a `+`.
        let ok = !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| n.parse::<u32>().ok()).flatten()
    };
    let (lo, hi) = (number(lo)?, number(hi)?);
    (1 <= lo && lo <= hi && hi <= MAX_ANNOUNCED_PROTOCOL).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> (Option<String>, Option<u32>) {
        let sw = Software::parse(s);
        (sw.version, sw.max_protocol)
    }

    #[test]
    fn our_announcement_reads_back() {
        let ours = announce("0.1.0", &(1..=2));
        assert_eq!(ours, "tally/0.1.0 protocols 1-2");
        assert_eq!(read(&ours), (Some("0.1.0".into()), Some(2)));
        assert_eq!(
            read(&announce("1.2.3-rc.1+abc", &(2..=7))),
            (Some("1.2.3-rc.1+abc".into()), Some(7))
        );
    }

    #[test]
    fn an_older_release_has_a_version_and_no_protocols() {
        assert_eq!(read("tally/0.1.0"), (Some("0.1.0".into()), None));
    }

    #[test]
    fn garbage_reads_as_none() {
        for s in [
            "",
            "rust-libp2p/0.53",
            "tally/",
            "tally/0.1.0 protocols",
            "tally/0.1.0 protocols 2",
            "tally/0.1.0 protocols 2-1",
            "tally/0.1.0 protocols 0-1",
            "tally/0.1.0 protocols 1-1001",
            "tally/0.1.0 protocols 1-99999999999999999999",
            "tally/0.1.0 protocols +1-2",
            "tally/0.1.0 protocols 1-2 extra",
            "tally/0.1.0  protocols 1-2",
            "tally/0.1.0\nprotocols 1-2",
            "tally/evil\u{1b}[31m protocols 1-2",
            "tally/x{}y",
        ] {
            assert_eq!(read(s), (None, None), "{s:?}");
        }
        let long = format!("tally/{}", "9".repeat(MAX_VERSION_LEN + 1));
        assert_eq!(read(&long), (None, None));
    }

    #[test]
    fn an_announced_agent_is_kept_printable_and_short() {
        assert_eq!(agent_of("tally/0.1.0"), "tally/0.1.0");
        assert_eq!(agent_of("evil\n\u{1b}[31mred\u{0}"), "evil[31mred");
        assert_eq!(agent_of(&"x".repeat(1000)).len(), MAX_AGENT_LEN);
    }
}
