//! One cgroup v2 directory and the files auraed reads and writes in it. Paths are data, so
//! unit tests point this at a fixture directory; only `kill`, `freeze` and process
//! placement need the real cgroupfs.

pub mod cpu;
pub mod cpuset;
pub mod io;
pub mod memory;
pub mod pids;

use super::error::{Result, RuntimeError};
use super::spec::Resources;
use crate::init::cgroup::read_controllers;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A cgroup v2 controller as the runtime sees it: which request fields need it, how to
/// write them, and how to read back what is in force.
pub struct Controller {
    pub name: &'static str,
    /// The request fields (proto names) that need this controller.
    pub fields: fn(&Resources) -> Vec<&'static str>,
    pub apply: fn(&CgroupDir, &Resources) -> Result<()>,
    pub read: fn(&CgroupDir, &mut Resources),
}

/// In the order they are applied.
pub const CONTROLLERS: [&Controller; 5] = [&cpu::CPU, &cpuset::CPUSET, &memory::MEMORY, &pids::PIDS, &io::IO];

/// Usage counters of a cgroup (hierarchical: they include its descendants).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usage_micros: u64,
    pub cpu_throttled_micros: u64,
    pub cpu_nr_throttled: u64,
    pub memory_current_bytes: u64,
    pub memory_peak_bytes: u64,
    pub memory_oom_events: u64,
    pub memory_oom_kill_events: u64,
    pub pids_current: u64,
    /// Page cache the kernel may drop at once (`memory.stat` inactive_file): what memory
    /// use less this is the working set kubelet evicts by.
    pub memory_inactive_file_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    pub fn new(path: impl Into<PathBuf>) -> CgroupDir {
        CgroupDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn child(&self, name: &str) -> CgroupDir {
        CgroupDir::new(self.path.join(name))
    }

    fn io_err(&self, what: &'static str, file: &str, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io {
            what,
            path: self.path.join(file),
            source,
        }
    }

    /// Creates the directory; a leftover empty one (from an earlier auraed) is reused.
    pub fn create(&self) -> Result<()> {
        match fs::create_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && self.procs().is_empty() => Ok(()),
            Err(e) => Err(self.io_err("mkdir", "", e)),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    pub fn has(&self, file: &str) -> bool {
        self.path.join(file).exists()
    }

    pub fn read(&self, file: &str) -> Option<String> {
        fs::read_to_string(self.path.join(file)).ok()
    }

    /// Writes `value` to `file`. When the kernel rejects the value (EINVAL, ERANGE,
    /// EOVERFLOW), the error names `field` so the caller knows what to change.
    pub fn write_field(&self, file: &str, value: &str, field: &str) -> Result<()> {
        fs::write(self.path.join(file), value).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL | libc::ERANGE | libc::EOVERFLOW) => {
                RuntimeError::invalid(field, format!("the kernel refused '{value}' for {file}: {e}"))
            }
            _ => self.io_err("write", file, e),
        })
    }

    pub fn write(&self, file: &str, value: &str) -> Result<()> {
        fs::write(self.path.join(file), value).map_err(|e| self.io_err("write", file, e))
    }

    /// Controllers this cgroup's children may use.
    pub fn subtree_control(&self) -> Vec<String> {
        read_controllers(&self.path.join("cgroup.subtree_control")).unwrap_or_default()
    }

    /// Controllers offered to this cgroup by its parent.
    pub fn controllers(&self) -> Vec<String> {
        read_controllers(&self.path.join("cgroup.controllers")).unwrap_or_default()
    }

    /// Enables every controller offered here for the children.
    pub fn enable_all_for_children(&self) -> Result<()> {
        let list: Vec<String> = self.controllers().iter().map(|c| format!("+{c}")).collect();
        if list.is_empty() {
            return Ok(());
        }
        self.write("cgroup.subtree_control", &list.join(" "))
    }

    /// Pids in this cgroup (not its descendants), as seen from auraed's pid namespace.
    pub fn procs(&self) -> Vec<i32> {
        self.read("cgroup.procs")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Pids in this cgroup and every descendant, except in descendants named `skip`.
    pub fn procs_below(&self, skip: &str) -> Vec<i32> {
        let mut out = self.procs();
        for d in self.subdirs() {
            if d.path.file_name().is_some_and(|n| n != skip) {
                out.extend(d.procs_below(skip));
            }
        }
        out
    }

    fn subdirs(&self) -> Vec<CgroupDir> {
        let Ok(rd) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| CgroupDir::new(e.path()))
            .collect()
    }

    /// True while any process is in this cgroup or below it.
    pub fn populated(&self) -> bool {
        keyed(self.read("cgroup.events").as_deref(), "populated").unwrap_or(0) == 1
    }

    /// SIGKILLs every process in this cgroup and below, atomically (`cgroup.kill`).
    pub fn kill(&self) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        self.write("cgroup.kill", "1")
    }

    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    pub fn frozen(&self) -> bool {
        keyed(self.read("cgroup.events").as_deref(), "frozen").unwrap_or(0) == 1
    }

    /// Removes this cgroup and its descendants, deepest first. They must be empty.
    pub fn remove_tree(&self) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        for d in self.subdirs() {
            d.remove_tree()?;
        }
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err("rmdir", "", e)),
        }
    }

    /// An fd on the directory, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn open_fd(&self) -> Result<OwnedFd> {
        let f = fs::File::open(&self.path).map_err(|e| self.io_err("open", "", e))?;
        Ok(OwnedFd::from(f))
    }

    pub fn usage(&self) -> Usage {
        let cpu = self.read("cpu.stat");
        let events = self.read("memory.events");
        let stat = self.read("memory.stat");
        let num = |f: &str| self.read(f).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Usage {
            cpu_usage_micros: keyed(cpu.as_deref(), "usage_usec").unwrap_or(0),
            cpu_throttled_micros: keyed(cpu.as_deref(), "throttled_usec").unwrap_or(0),
            cpu_nr_throttled: keyed(cpu.as_deref(), "nr_throttled").unwrap_or(0),
            memory_current_bytes: num("memory.current"),
            memory_peak_bytes: num("memory.peak"),
            memory_oom_events: keyed(events.as_deref(), "oom").unwrap_or(0),
            memory_oom_kill_events: keyed(events.as_deref(), "oom_kill").unwrap_or(0),
            pids_current: num("pids.current"),
            memory_inactive_file_bytes: keyed(stat.as_deref(), "inactive_file").unwrap_or(0),
        }
    }

    /// The limits in force, read back from the controller files.
    pub fn resources(&self) -> Resources {
        let mut r = Resources::default();
        for c in CONTROLLERS {
            (c.read)(self, &mut r);
        }
        r
    }
}

/// Value of `key` in a "key value" per line file (cpu.stat, memory.events, cgroup.events).
pub fn keyed(text: Option<&str>, key: &str) -> Option<u64> {
    text?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Reads a single-value file where "max" means unlimited (None).
pub fn read_max(dir: &CgroupDir, file: &str) -> Option<u64> {
    let s = dir.read(file)?;
    let s = s.trim();
    if s == "max" {
        None
    } else {
        s.parse().ok()
    }
}

/// Like `read_max`, but a value equal to `default` is reported as unset.
pub fn read_non_default(dir: &CgroupDir, file: &str, default: u64) -> Option<u64> {
    read_max(dir, file).filter(|v| *v != default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage_from_fixture_files() {
        let d = tempfile::tempdir().unwrap();
        let c = CgroupDir::new(d.path());
        fs::write(
            d.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 3\nthrottled_usec 4200\n",
        )
        .unwrap();
        fs::write(
            d.path().join("memory.events"),
            "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(d.path().join("memory.current"), "4096\n").unwrap();
        fs::write(d.path().join("memory.peak"), "8192\n").unwrap();
        fs::write(d.path().join("pids.current"), "3\n").unwrap();
        fs::write(
            d.path().join("memory.stat"),
            "anon 1024\nfile 2048\ninactive_file 1536\n",
        )
        .unwrap();
        fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let u = c.usage();
        assert_eq!(
            u,
            Usage {
                cpu_usage_micros: 1500,
                cpu_throttled_micros: 4200,
                cpu_nr_throttled: 3,
                memory_current_bytes: 4096,
                memory_peak_bytes: 8192,
                memory_oom_events: 2,
                memory_oom_kill_events: 1,
                pids_current: 3,
                memory_inactive_file_bytes: 1536,
            }
        );
        assert!(c.populated());
        assert!(!c.frozen());
    }

    #[test]
    fn procs_below_walks_descendants_but_skips_the_named_ones() {
        let d = tempfile::tempdir().unwrap();
        let c = CgroupDir::new(d.path());
        for (dir, pids) in [
            ("", "1\n"),
            ("_init", "2\n"),
            ("_x.a", "3\n4\n"),
            ("b", ""),
            ("b/_init", "5\n"),
            ("b/_x.c", "6\n"),
        ] {
            fs::create_dir_all(d.path().join(dir)).unwrap();
            fs::write(d.path().join(dir).join("cgroup.procs"), pids).unwrap();
        }
        let mut pids = c.procs_below("_init");
        pids.sort();
        assert_eq!(pids, [1, 3, 4, 6]);
    }

    #[test]
    fn remove_tree_goes_deepest_first() {
        let d = tempfile::tempdir().unwrap();
        let c = CgroupDir::new(d.path().join("cell"));
        c.create().unwrap();
        c.child("_x.a").create().unwrap();
        c.child("b").create().unwrap();
        c.child("b").child("_init").create().unwrap();
        c.remove_tree().unwrap();
        assert!(!c.exists());
    }
}
