//! The `io` controller: io.weight and io.max per block device.

use super::{CgroupDir, Controller};
use crate::runtime::error::Lack;
use crate::runtime::error::Result;
use crate::runtime::spec::{IoMax, Resources};

pub const IO: Controller = Controller {
    name: "io",
    fields: |r| {
        let mut f = Vec::new();
        if r.io_weight.is_some() {
            f.push("io_weight");
        }
        if !r.io_max.is_empty() {
            f.push("io_max");
        }
        f
    },
    apply,
    read,
};

fn apply(dir: &CgroupDir, r: &Resources) -> Result<()> {
    if r.io_weight.is_some() && !dir.has("io.weight") {
        return Err(Lack::KernelFeature {
            field: "io_weight",
            what: "io.weight (it needs CONFIG_BLK_CGROUP_IOCOST)",
        }
        .into());
    }
    if !r.io_max.is_empty() && !dir.has("io.max") {
        return Err(Lack::KernelFeature {
            field: "io_max",
            what: "io.max (it needs CONFIG_BLK_DEV_THROTTLING)",
        }
        .into());
    }
    if let Some(w) = r.io_weight {
        dir.write_field("io.weight", &format!("default {w}"), "io_weight")?;
    }
    for m in &r.io_max {
        dir.write_field("io.max", &io_max_line(m), "io_max")?;
    }
    Ok(())
}

fn io_max_line(m: &IoMax) -> String {
    let v = |o: Option<u64>| o.map_or("max".to_owned(), |n| n.to_string());
    format!(
        "{}:{} rbps={} wbps={} riops={} wiops={}",
        m.major,
        m.minor,
        v(m.rbps),
        v(m.wbps),
        v(m.riops),
        v(m.wiops)
    )
}

fn read(dir: &CgroupDir, r: &mut Resources) {
    r.io_weight = dir
        .read("io.weight")
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("default ")?.trim().parse().ok()))
        .filter(|w| *w != 100);
    r.io_max = dir
        .read("io.max")
        .map(|s| s.lines().filter_map(parse_io_max).collect())
        .unwrap_or_default();
}

fn parse_io_max(line: &str) -> Option<IoMax> {
    let mut it = line.split_whitespace();
    let (major, minor) = it.next()?.split_once(':')?;
    let mut m = IoMax {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        rbps: None,
        wbps: None,
        riops: None,
        wiops: None,
    };
    for kv in it {
        let (k, v) = kv.split_once('=')?;
        let v = v.parse().ok();
        match k {
            "rbps" => m.rbps = v,
            "wbps" => m.wbps = v,
            "riops" => m.riops = v,
            "wiops" => m.wiops = v,
            _ => {}
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_round_trips() {
        let m = IoMax {
            major: 254,
            minor: 0,
            rbps: Some(1_048_576),
            wbps: None,
            riops: None,
            wiops: Some(100),
        };
        let line = io_max_line(&m);
        assert_eq!(line, "254:0 rbps=1048576 wbps=max riops=max wiops=100");
        assert_eq!(parse_io_max(&line), Some(m));
    }
}
