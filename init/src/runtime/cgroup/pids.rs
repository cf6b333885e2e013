//! The `pids` controller: pids.max.

use super::{read_max, CgroupDir, Controller};
use crate::runtime::error::Result;
use crate::runtime::spec::Resources;

pub const PIDS: Controller = Controller {
    name: "pids",
    fields: |r| r.pids_max.map(|_| vec!["pids_max"]).unwrap_or_default(),
    apply,
    read,
};

fn apply(dir: &CgroupDir, r: &Resources) -> Result<()> {
    if let Some(p) = r.pids_max {
        dir.write_field("pids.max", &p.to_string(), "pids_max")?;
    }
    Ok(())
}

fn read(dir: &CgroupDir, r: &mut Resources) {
    r.pids_max = read_max(dir, "pids.max");
}
