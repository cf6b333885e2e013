//! The `cpuset` controller: cpuset.cpus and cpuset.mems (kernel list syntax).

use super::{CgroupDir, Controller};
use crate::runtime::error::Result;
use crate::runtime::spec::Resources;

pub const CPUSET: Controller = Controller {
    name: "cpuset",
    fields: |r| {
        let mut f = Vec::new();
        if r.cpuset_cpus.is_some() {
            f.push("cpuset_cpus");
        }
        if r.cpuset_mems.is_some() {
            f.push("cpuset_mems");
        }
        f
    },
    apply,
    read,
};

fn apply(dir: &CgroupDir, r: &Resources) -> Result<()> {
    if let Some(c) = &r.cpuset_cpus {
        dir.write_field("cpuset.cpus", c, "cpuset_cpus")?;
    }
    if let Some(m) = &r.cpuset_mems {
        dir.write_field("cpuset.mems", m, "cpuset_mems")?;
    }
    Ok(())
}

fn read(dir: &CgroupDir, r: &mut Resources) {
    let get = |f: &str| dir.read(f).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    r.cpuset_cpus = get("cpuset.cpus");
    r.cpuset_mems = get("cpuset.mems");
}

/// Parses kernel list syntax ("0-2,5") into the members; None when malformed.
pub fn parse_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let v = part.trim().parse::<u32>().ok()?;
                (v, v)
            }
        };
        if a > b || b - a > 4096 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_lists() {
        assert_eq!(parse_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_list("1"), Some(vec![1]));
        assert_eq!(parse_list("2-1"), None);
        assert_eq!(parse_list("a"), None);
        assert_eq!(parse_list(""), None);
    }
}
