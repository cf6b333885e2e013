//! Who may do what on a node: a policy maps SPIFFE IDs (exact, or a path prefix) to roles.
//! Identity comes from the certificate (who you are); the policy, a separate file beside
//! the certificates (`policy.toml` in the PKI directory), says what that identity may do.
//!
//! ```toml
//! # Only in a spawned instance's policy: the node that spawned it. Its calls may carry the
//! # original caller of a forwarded call, which is then authorized instead of the parent.
//! parent = "spiffe://aurae.local/node/aurae"
//!
//! [[allow]]
//! id = "spiffe://aurae.local/client/admin"      # exactly this ID
//! role = "admin"
//!
//! [[allow]]
//! prefix = "spiffe://aurae.local/client/ops"    # this ID and every ID below it
//! role = "operator"
//! ```
//!
//! An exact entry wins over prefixes; among prefixes the longest wins. A prefix matches
//! whole path segments only (`client/ops` covers `client/ops/ann`, not `client/opsec`).
//! An ID no entry names has no role: every call is refused.

use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// What a caller may do. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Health, node info, list, status, logs, wait.
    Reader,
    /// Reader, plus run, stop, free, freeze and thaw workloads of every kind.
    Operator,
    /// Everything: power, and VMs from arbitrary files on the node.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, PolicyError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownRole(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown role '{0}': the roles are reader, operator and admin")]
    UnknownRole(String),
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("allow entry {index}: {message}")]
    Entry { index: usize, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("no PKI directory")]
    NoPkiDir,
}

/// Why a string is not a SPIFFE ID a policy may name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("'{0}' is not a SPIFFE ID (spiffe://DOMAIN/PATH)")]
    NoScheme(String),
    #[error("'{0}': the trust domain must be lowercase [a-z0-9.-_]")]
    Domain(String),
    #[error("'{0}': path segments must be non-empty [A-Za-z0-9._-], not '.' or '..', without a trailing '/'")]
    Path(String),
}

/// How an entry names IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matcher: Matcher,
    pub role: Role,
}

impl Rule {
    fn matches(&self, id: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(e) => e == id,
            Matcher::Prefix(p) => match id.strip_prefix(p.as_str()) {
                Some("") => true,
                // Whole segments only, and never into a spawned instance: instance IDs are
                // matched by exact entries alone, so no prefix hands one a right by accident.
                Some(rest) => rest.starts_with('/') && !rest.split('/').any(|s| s == "instance"),
                None => false,
            },
        }
    }

    /// The ID or prefix, for messages and NodeInfo.
    pub fn pattern(&self) -> &str {
        match &self.matcher {
            Matcher::Exact(s) | Matcher::Prefix(s) => s,
        }
    }

    pub fn is_prefix(&self) -> bool {
        matches!(self.matcher, Matcher::Prefix(_))
    }
}

/// A node's policy: its parent (for a spawned instance) and its rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub parent: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    parent: Option<String>,
    #[serde(default)]
    allow: Vec<FileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    id: Option<String>,
    prefix: Option<String>,
    role: String,
}

pub const FILE_NAME: &str = "policy.toml";

/// A SPIFFE ID as a policy may name it: `spiffe://domain/path`, no query, no fragment, no
/// empty or dot segments (what the SPIFFE spec allows, so a typo cannot silently match
/// nothing).
pub fn check_spiffe_id(id: &str) -> Result<(), SpiffeIdError> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err(SpiffeIdError::NoScheme(id.to_owned()));
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !ok(domain) || domain.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(SpiffeIdError::Domain(id.to_owned()));
    }
    if !path.is_empty() && !path.split('/').all(|s| ok(s) && s != "." && s != "..") {
        return Err(SpiffeIdError::Path(id.to_owned()));
    }
    Ok(())
}

impl Policy {
    pub fn parse(text: &str, path: &str) -> Result<Policy, PolicyError> {
        let f: File = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(p) = &f.parent {
            check_spiffe_id(p).map_err(|message| PolicyError::Parse {
                path: path.to_owned(),
                message: format!("parent: {message}"),
            })?;
        }
        let mut rules = Vec::with_capacity(f.allow.len());
        for (i, r) in f.allow.into_iter().enumerate() {
            let entry = |message: String| PolicyError::Entry { index: i + 1, message };
            let matcher = match (r.id, r.prefix) {
                (Some(id), None) => Matcher::Exact(id),
                (None, Some(p)) => Matcher::Prefix(p),
                _ => return Err(entry("give exactly one of `id` (exact) or `prefix`".into())),
            };
            let role = Role::parse(&r.role).map_err(|e| entry(e.to_string()))?;
            let rule = Rule { matcher, role };
            check_spiffe_id(rule.pattern()).map_err(|e| entry(e.to_string()))?;
            rules.push(rule);
        }
        Ok(Policy {
            parent: f.parent,
            rules,
        })
    }

    /// Reads `<dir>/policy.toml`.
    pub fn load(dir: &Path) -> Result<Policy, PolicyError> {
        let path = dir.join(FILE_NAME);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            path: shown.clone(),
            source,
        })?;
        Policy::parse(&text, &shown)
    }

    /// The rule that decides for `id`: an exact entry, else the longest matching prefix.
    pub fn rule_for(&self, id: &str) -> Option<&Rule> {
        let exact = self.rules.iter().find(|r| !r.is_prefix() && r.matches(id));
        exact.or_else(|| {
            self.rules
                .iter()
                .filter(|r| r.is_prefix() && r.matches(id))
                .max_by_key(|r| r.pattern().len())
        })
    }

    pub fn role_of(&self, id: &str) -> Option<Role> {
        self.rule_for(id).map(|r| r.role)
    }

    /// Gives `id` exactly `role`, replacing an exact entry it had.
    pub fn grant(&mut self, id: &str, role: Role) {
        self.put(Matcher::Exact(id.to_owned()), role);
    }

    /// Gives `prefix` and every ID under it `role`, replacing an entry for that prefix.
    pub fn grant_prefix(&mut self, prefix: &str, role: Role) {
        self.put(Matcher::Prefix(prefix.to_owned()), role);
    }

    fn put(&mut self, matcher: Matcher, role: Role) {
        self.rules.retain(|r| r.matcher != matcher);
        self.rules.push(Rule { matcher, role });
    }

    /// The policy of an instance this node spawns: its parent (this node, `parent_id`) is
    /// admin, and the clients this node knows keep their roles there (so a call forwarded on
    /// their behalf is authorized as them). Nothing else, in particular no other instance
    /// and no other node, has any right on the child.
    pub fn for_child(&self, parent_id: &str) -> Policy {
        let clients = format!("{}client", super::domain_root(parent_id));
        let mut rules = vec![Rule {
            matcher: Matcher::Exact(parent_id.to_owned()),
            role: Role::Admin,
        }];
        rules.extend(
            self.rules
                .iter()
                .filter(|r| r.pattern() == clients || r.pattern().starts_with(&format!("{clients}/")))
                .cloned(),
        );
        Policy {
            parent: Some(parent_id.to_owned()),
            rules,
        }
    }

    /// The TOML text of this policy (what `parse` reads back).
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Who may call this node, and with which role (reader, operator, admin).\n\
             # See docs/api.md (\"Identities, roles and the policy\"). auraed reads this file at start.\n",
        );
        if let Some(p) = &self.parent {
            s.push_str(&format!(
                "\n# The node that spawned this one: it may pass on the original caller of a forwarded call.\nparent = \"{p}\"\n"
            ));
        }
        for r in &self.rules {
            let key = if r.is_prefix() { "prefix" } else { "id" };
            s.push_str(&format!(
                "\n[[allow]]\n{key} = \"{}\"\nrole = \"{}\"\n",
                r.pattern(),
                r.role
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "spiffe://t.test/";

    fn policy(text: &str) -> Policy {
        Policy::parse(text, "policy.toml").unwrap()
    }

    #[test]
    fn exact_entries_win_and_the_longest_prefix_decides_the_rest() {
        let p = policy(
            r#"
            [[allow]]
            prefix = "spiffe://t.test/client"
            role = "reader"
            [[allow]]
            prefix = "spiffe://t.test/client/ops"
            role = "operator"
            [[allow]]
            id = "spiffe://t.test/client/ops/intern"
            role = "reader"
            [[allow]]
            id = "spiffe://t.test/client/root"
            role = "admin"
            "#,
        );
        let role = |id: &str| p.role_of(&format!("{D}{id}"));
        assert_eq!(role("client/root"), Some(Role::Admin));
        assert_eq!(role("client/ops"), Some(Role::Operator));
        assert_eq!(role("client/ops/ann"), Some(Role::Operator));
        assert_eq!(role("client/ops/intern"), Some(Role::Reader));
        // Whole segments only.
        assert_eq!(role("client/opsec"), Some(Role::Reader));
        assert_eq!(role("clientele"), None);
        assert_eq!(role("node/aurae/instance/c1"), None);
        assert_eq!(p.role_of("spiffe://other.test/client/root"), None);
        // A prefix never reaches into spawned instances; only an exact entry names one.
        let p = policy("[[allow]]\nprefix = \"spiffe://t.test/node\"\nrole = \"admin\"\n[[allow]]\nid = \"spiffe://t.test/node/n/instance/c9\"\nrole = \"reader\"\n");
        assert_eq!(p.role_of(&format!("{D}node/n")), Some(Role::Admin));
        assert_eq!(p.role_of(&format!("{D}node/n/instance/c1")), None);
        assert_eq!(p.role_of(&format!("{D}node/n/instance/c9")), Some(Role::Reader));
    }

    #[test]
    fn roles_are_ordered_and_unknown_ones_are_refused_at_load() {
        assert!(Role::Reader < Role::Operator && Role::Operator < Role::Admin);
        let e = Policy::parse(
            "[[allow]]\nid = \"spiffe://t.test/client/a\"\nrole = \"root\"\n",
            "p.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "allow entry 1: unknown role 'root': the roles are reader, operator and admin"
        );
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry_named() {
        for (text, needle) in [
            ("[[allow]]\nrole = \"admin\"\n", "exactly one of `id`"),
            (
                "[[allow]]\nid = \"spiffe://t.test/a\"\nprefix = \"spiffe://t.test/a\"\nrole = \"admin\"\n",
                "exactly one of `id`",
            ),
            ("[[allow]]\nid = \"client/a\"\nrole = \"admin\"\n", "not a SPIFFE ID"),
            (
                "[[allow]]\nprefix = \"spiffe://t.test/client/\"\nrole = \"admin\"\n",
                "trailing",
            ),
            ("[[allow]]\nid = \"spiffe://t.test/a/../b\"\nrole = \"admin\"\n", "'..'"),
            ("[[allow]]\nid = \"spiffe://T.test/a\"\nrole = \"admin\"\n", "lowercase"),
            (
                "[[allow]]\nid = \"spiffe://t.test/a\"\nrole = \"admin\"\nwho = 1\n",
                "unknown field",
            ),
            ("parent = \"nope\"\n", "parent"),
        ] {
            let e = Policy::parse(text, "p.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn render_reads_back_and_grant_replaces_an_exact_entry() {
        let mut p = policy("[[allow]]\nprefix = \"spiffe://t.test/client/ops\"\nrole = \"operator\"\n");
        p.grant("spiffe://t.test/client/ann", Role::Reader);
        p.grant("spiffe://t.test/client/ann", Role::Admin);
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.role_of("spiffe://t.test/client/ann"), Some(Role::Admin));
        assert_eq!(policy(&p.render()), p);
    }

    #[test]
    fn a_child_trusts_its_parent_and_the_clients_and_no_instance_or_node() {
        let p = policy(
            r#"
            [[allow]]
            id = "spiffe://t.test/client/admin"
            role = "admin"
            [[allow]]
            prefix = "spiffe://t.test/client/readers"
            role = "reader"
            [[allow]]
            prefix = "spiffe://t.test/node"
            role = "admin"
            "#,
        );
        let parent = "spiffe://t.test/node/n/instance/c1";
        let c = p.for_child(parent);
        assert_eq!(c.parent.as_deref(), Some(parent));
        assert_eq!(c.role_of(parent), Some(Role::Admin));
        assert_eq!(c.role_of("spiffe://t.test/client/admin"), Some(Role::Admin));
        assert_eq!(c.role_of("spiffe://t.test/client/readers/bo"), Some(Role::Reader));
        // Not the grandparent, not a sibling, not the child itself.
        assert_eq!(c.role_of("spiffe://t.test/node/n"), None);
        assert_eq!(c.role_of("spiffe://t.test/node/n/instance/c2"), None);
        assert_eq!(c.role_of("spiffe://t.test/node/n/instance/c1/instance/g1"), None);
        assert_eq!(policy(&c.render()), c);
    }
}
