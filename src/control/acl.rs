//! Access control for discovery and activation: allow and deny lists of bare JIDs,
//! domains and `*.domain` wildcards. Deny wins. With no allow list, only users of the
//! configured server domains are served, never the whole network.

use jid::{BareJid, Jid};

/// One access list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `*`: every JID (an explicit opt-in to serve the whole network).
    Any,
    /// `user@domain`: that account, any resource.
    Bare(BareJid),
    /// `domain`: every JID of that domain (and the domain itself), not its subdomains.
    Domain(String),
    /// `*.domain`: every JID of any subdomain of `domain`, not `domain` itself.
    Subdomains(String),
}

impl Entry {
    /// Parses and normalises (stringprep, lowercase) an entry; the error says why not.
    pub fn parse(text: &str) -> Result<Entry, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Entry::Any);
        }
        if text.contains('/') {
            return Err(format!(
                "{text:?}: resources are not supported, use a bare JID"
            ));
        }
        if let Some(rest) = text.strip_prefix("*.") {
            return Ok(Entry::Subdomains(normalise_domain(rest)?));
        }
        if text.contains('*') {
            return Err(format!(
                "{text:?}: a wildcard is only allowed as `*.domain`"
            ));
        }
        if text.contains('@') {
            return BareJid::new(text)
                .map(Entry::Bare)
                .map_err(|e| format!("{text:?}: {e}"));
        }
        Ok(Entry::Domain(normalise_domain(text)?))
    }

    pub fn matches(&self, jid: &Jid) -> bool {
        match self {
            Entry::Any => true,
            Entry::Bare(b) => jid.to_bare() == *b,
            Entry::Domain(d) => jid.domain().as_str() == d,
            Entry::Subdomains(d) => jid
                .domain()
                .as_str()
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

fn normalise_domain(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('@') {
        return Err(format!("{text:?} is not a domain"));
    }
    let bare = BareJid::new(text).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(bare.domain().as_str().to_string())
}

/// The access decision for one requesting JID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    allow: Vec<Entry>,
    deny: Vec<Entry>,
}

impl Acl {
    /// `allow` empty means: the users of `domains` only.
    pub fn new(allow: Vec<Entry>, deny: Vec<Entry>, domains: &[String]) -> Acl {
        let allow = if allow.is_empty() {
            domains.iter().map(|d| Entry::Domain(d.clone())).collect()
        } else {
            allow
        };
        Acl { allow, deny }
    }

    pub fn permits(&self, jid: &Jid) -> bool {
        !self.deny.iter().any(|e| e.matches(jid)) && self.allow.iter().any(|e| e.matches(jid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    fn entries(list: &[&str]) -> Vec<Entry> {
        list.iter().map(|s| Entry::parse(s).unwrap()).collect()
    }

    #[test]
    fn parses_each_kind_and_normalises_case() {
        assert_eq!(Entry::parse("*").unwrap(), Entry::Any);
        assert_eq!(
            Entry::parse("Romeo@Montague.LIT").unwrap(),
            Entry::Bare(BareJid::new("romeo@montague.lit").unwrap())
        );
        assert_eq!(
            Entry::parse("Example.ORG").unwrap(),
            Entry::Domain("example.org".into())
        );
        assert_eq!(
            Entry::parse("*.Example.org").unwrap(),
            Entry::Subdomains("example.org".into())
        );
    }

    #[test]
    fn rejects_bad_entries() {
        for bad in ["a@b/c", "x*.y", "a.*.b", "", "*.", "@x", "a@"] {
            assert!(Entry::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bare_matches_every_resource_of_that_account_only() {
        let e = Entry::parse("romeo@montague.lit").unwrap();
        assert!(e.matches(&j("romeo@montague.lit/orchard")));
        assert!(e.matches(&j("ROMEO@montague.lit/x")));
        assert!(!e.matches(&j("juliet@montague.lit/orchard")));
        assert!(!e.matches(&j("montague.lit")));
    }

    #[test]
    fn domain_matches_users_of_it_not_subdomains() {
        let e = Entry::parse("example.org").unwrap();
        assert!(e.matches(&j("a@example.org/r")));
        assert!(e.matches(&j("example.org")));
        assert!(!e.matches(&j("a@sub.example.org/r")));
        assert!(!e.matches(&j("a@badexample.org/r")));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let e = Entry::parse("*.example.org").unwrap();
        assert!(e.matches(&j("a@sub.example.org/r")));
        assert!(e.matches(&j("a@deep.sub.example.org")));
        assert!(!e.matches(&j("a@example.org/r")));
        assert!(!e.matches(&j("a@badexample.org/r")));
    }

    #[test]
    fn default_serves_configured_domains_only() {
        let acl = Acl::new(vec![], vec![], &["example.org".into()]);
        assert!(acl.permits(&j("a@example.org/r")));
        assert!(!acl.permits(&j("a@elsewhere.net/r")));
        assert!(!acl.permits(&j("a@sub.example.org/r")));
    }

    #[test]
    fn explicit_allow_replaces_the_default() {
        let acl = Acl::new(
            entries(&["friend@elsewhere.net"]),
            vec![],
            &["example.org".into()],
        );
        assert!(acl.permits(&j("friend@elsewhere.net/r")));
        assert!(!acl.permits(&j("a@example.org/r")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = Acl::new(
            entries(&["*.example.org", "example.org"]),
            entries(&["mallory@example.org", "bad.example.org"]),
            &[],
        );
        assert!(acl.permits(&j("alice@example.org/r")));
        assert!(acl.permits(&j("alice@good.example.org/r")));
        assert!(!acl.permits(&j("mallory@example.org/r")));
        assert!(!acl.permits(&j("alice@bad.example.org/r")));
        let all = Acl::new(entries(&["*"]), entries(&["*.evil.net"]), &[]);
        assert!(all.permits(&j("x@anywhere.net")));
        assert!(!all.permits(&j("x@a.evil.net")));
    }
}
