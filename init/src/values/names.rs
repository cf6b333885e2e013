//! Workload names. A segment is `[a-z0-9][a-z0-9._-]{0,62}` without `..`; cell names join
//! up to [`MAX_DEPTH`] segments with `/` (`parent/child`). Names become cgroup directory
//! names, so anything that could escape the workloads cgroup is refused here, once.

use std::fmt;

pub const MAX_SEGMENT: usize = 63;
pub const MAX_DEPTH: usize = crate::pki::MAX_NESTING;

/// Why a name was refused; `Display` says what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    pub name: String,
    pub reason: String,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' {}", self.name.escape_debug(), self.reason)
    }
}

fn refuse(name: &str, reason: impl Into<String>) -> NameError {
    NameError {
        name: name.chars().take(80).collect(),
        reason: reason.into(),
    }
}

fn check_segment(whole: &str, seg: &str) -> Result<(), NameError> {
    if seg.is_empty() {
        return Err(refuse(
            whole,
            "has an empty segment; use names like 'web' or 'web/sidecar'",
        ));
    }
    if seg.len() > MAX_SEGMENT {
        return Err(refuse(
            whole,
            format!("has a segment of {} characters; the limit is {MAX_SEGMENT}", seg.len()),
        ));
    }
    if seg.contains("..") {
        return Err(refuse(whole, "may not contain '..'"));
    }
    let mut chars = seg.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(refuse(whole, "must start each segment with a-z or 0-9"));
    }
    if let Some(bad) = seg
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(refuse(
            whole,
            format!("contains {bad:?}; only a-z, 0-9, '.', '_' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// A validated executable name (one segment).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecName(String);

impl ExecName {
    pub fn parse(s: &str) -> Result<ExecName, NameError> {
        Self::parse_one(
            s,
            "is empty; give the executable a name like 'web'",
            "may not contain '/'; put the executable in a cell with `cell` instead",
        )
    }

    /// A virtual machine's name: one segment, like an executable's.
    pub fn parse_vm(s: &str) -> Result<ExecName, NameError> {
        Self::parse_one(
            s,
            "is empty; give the virtual machine a name like 'vm1'",
            "may not contain '/'; a virtual machine's name is one segment like 'vm1'",
        )
    }

    /// An instance's name: one segment; deeper instances are spawned by their parent.
    pub fn parse_instance(s: &str) -> Result<ExecName, NameError> {
        Self::parse_one(
            s,
            "is empty; give the instance a name like 'c1'",
            "may not contain '/'; to spawn inside a child, send Spawn to the child (aer --instance CHILD spawn NAME)",
        )
    }

    fn parse_one(s: &str, empty: &str, slash: &str) -> Result<ExecName, NameError> {
        if s.is_empty() {
            return Err(refuse(s, empty));
        }
        if s.contains('/') {
            return Err(refuse(s, slash));
        }
        check_segment(s, s)?;
        Ok(ExecName(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExecName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated cell name: one to [`MAX_DEPTH`] segments joined by `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellName(String);

impl CellName {
    pub fn parse(s: &str) -> Result<CellName, NameError> {
        if s.is_empty() {
            return Err(refuse(s, "is empty; give the cell a name like 'web' or 'web/sidecar'"));
        }
        let segments: Vec<&str> = s.split('/').collect();
        if segments.len() > MAX_DEPTH {
            return Err(refuse(
                s,
                format!("nests {} deep; the limit is {MAX_DEPTH}", segments.len()),
            ));
        }
        for seg in &segments {
            check_segment(s, seg)?;
        }
        Ok(CellName(s.to_owned()))
    }

    /// The cell an executable gets when it names none: a cell named after it.
    pub fn of_executable(e: &ExecName) -> CellName {
        CellName(e.0.clone())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The enclosing cell of a nested cell (`a/b` → `a`).
    pub fn parent(&self) -> Option<CellName> {
        self.0.rsplit_once('/').map(|(p, _)| CellName(p.to_owned()))
    }

    /// The last segment (used as the cell's hostname).
    pub fn leaf(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True when `self` is `other` or nested (at any depth) inside it.
    pub fn is_within(&self, other: &CellName) -> bool {
        self.0 == other.0 || self.0.starts_with(&format!("{}/", other.0))
    }
}

impl fmt::Display for CellName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_nested_names() {
        assert!(ExecName::parse("web-1.v2_x").is_ok());
        let c = CellName::parse("a/b/c").unwrap();
        assert_eq!(c.parent().unwrap().as_str(), "a/b");
        assert_eq!(c.leaf(), "c");
        assert!(c.is_within(&CellName::parse("a").unwrap()));
        assert!(!CellName::parse("ab").unwrap().is_within(&CellName::parse("a").unwrap()));
    }

    #[test]
    fn refuses_escapes_and_junk_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("..", "'..'"),
            ("a..b", "'..'"),
            ("a//b", "empty segment"),
            ("/a", "empty segment"),
            ("a/", "empty segment"),
            ("A", "start each segment"),
            ("a b", "' '"),
            ("_x", "start each segment"),
            ("a\u{e9}", "'\u{e9}'"),
        ] {
            let e = CellName::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        assert!(CellName::parse(&"a".repeat(64))
            .unwrap_err()
            .to_string()
            .contains("limit is 63"));
        assert!(CellName::parse(&["a"; 9].join("/"))
            .unwrap_err()
            .to_string()
            .contains("limit is 8"));
        assert!(ExecName::parse("a/b").unwrap_err().to_string().contains("'/'"));
        let vm = ExecName::parse_vm("a/b").unwrap_err().to_string();
        assert!(
            vm.contains("virtual machine's name is one segment") && !vm.contains("cell"),
            "{vm}"
        );
        let i = ExecName::parse_instance("c1/g1").unwrap_err().to_string();
        assert!(i.contains("aer --instance CHILD spawn NAME"), "{i}");
        assert!(ExecName::parse_vm("")
            .unwrap_err()
            .to_string()
            .contains("virtual machine"));
    }
}
