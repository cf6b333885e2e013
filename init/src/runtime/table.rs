//! The workload table: every workload this node runs, one entry per (kind, name), and the
//! one place where a kind's lifecycle (view, wait, stop, free, logs) is chosen. A new kind
//! adds a variant here and a file of its own; nothing else matches on kinds.
//!
//! Executables, VMs and instances also own a cell named after them (private cells), so
//! the cell namespace is shared: each kind's `Run*` maps a cell-name collision to a message
//! of its own.

use super::cell::Cell;
use super::error::{Result, RuntimeError};
use super::executable::Executable;
use super::logs::LogBuffer;
use super::pod::Pod;
use super::spawn::instance::Instance;
use super::vm::VirtualMachine;
use super::Kind;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One workload of any kind.
#[derive(Clone)]
pub(crate) enum Workload {
    Cell(Arc<Cell>),
    Executable(Arc<Executable>),
    VirtualMachine(Arc<VirtualMachine>),
    Instance(Arc<Instance>),
    Pod(Arc<Pod>),
}

impl Kind {
    /// What users call it, in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Cell => "cell",
            Kind::Executable => "executable",
            Kind::VirtualMachine => "virtual machine",
            Kind::Instance => "instance",
            Kind::Pod => "pod",
        }
    }

    /// The `aer` words for this kind's commands ("" for executables: `aer free NAME`).
    fn cli(self) -> &'static str {
        match self {
            Kind::Cell => "cell ",
            Kind::Executable => "",
            Kind::VirtualMachine => "vm ",
            Kind::Instance => "instance ",
            Kind::Pod => "pod ",
        }
    }

    fn ls(self) -> &'static str {
        match self {
            Kind::Cell | Kind::Executable => "aer ps",
            Kind::VirtualMachine => "aer vm ls",
            Kind::Instance => "aer instance ls",
            Kind::Pod => "aer pod ls",
        }
    }
}

/// A workload type that lives in the table under one kind. The kinds' own files never
/// name `Workload`: they put themselves in the table through this trait.
pub(crate) trait Entry: Sized {
    const KIND: Kind;
    fn of(w: &Workload) -> Option<&Arc<Self>>;
    fn wrap(x: Arc<Self>) -> Workload;
}

macro_rules! entry {
    ($t:ty, $kind:ident) => {
        impl Entry for $t {
            const KIND: Kind = Kind::$kind;
            fn of(w: &Workload) -> Option<&Arc<Self>> {
                match w {
                    Workload::$kind(x) => Some(x),
                    _ => None,
                }
            }
            fn wrap(x: Arc<Self>) -> Workload {
                Workload::$kind(x)
            }
        }
    };
}
entry!(Cell, Cell);
entry!(Executable, Executable);
entry!(VirtualMachine, VirtualMachine);
entry!(Instance, Instance);
entry!(Pod, Pod);

fn not_found(kind: Kind, name: &str) -> RuntimeError {
    RuntimeError::NotFound(format!("no {} named '{name}' ({} lists them)", kind.noun(), kind.ls()))
}

pub(crate) fn already_exists(kind: Kind, name: &str) -> RuntimeError {
    let article = if kind == Kind::Executable || kind == Kind::Instance {
        "an"
    } else {
        "a"
    };
    RuntimeError::AlreadyExists(format!(
        "{article} {} named '{name}' already exists; free it (aer {}free {name}) or choose another name",
        kind.noun(),
        kind.cli()
    ))
}

pub(crate) struct Table {
    entries: BTreeMap<(Kind, String), Workload>,
    /// Host numbers on the bridge taken by instances.
    pub hosts: BTreeSet<u8>,
    /// Addresses on named bridges taken by instances' extra interfaces, with the instance.
    pub attached: BTreeMap<(String, std::net::Ipv4Addr), String>,
    /// At most this many entries (`aurae.max_workloads`): each holds memory (status, logs)
    /// until it is freed, so their number is bounded.
    pub max: usize,
    /// What happens to them: created and freed here, the rest where it happens.
    pub events: std::sync::Arc<super::events::Events<Kind>>,
    /// Followed workloads whose end is not told yet: told by whichever comes first, the
    /// end or the Free (so the end always comes before Freed).
    untold: Arc<std::sync::Mutex<BTreeSet<(Kind, String)>>>,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            entries: BTreeMap::new(),
            hosts: BTreeSet::new(),
            attached: BTreeMap::new(),
            max: crate::init::cmdline::DEFAULT_MAX_WORKLOADS,
            events: Default::default(),
            untold: Default::default(),
        }
    }
}

impl Table {
    pub fn get<T: Entry>(&self, name: &str) -> Result<Arc<T>> {
        self.entries
            .get(&(T::KIND, name.to_owned()))
            .and_then(T::of)
            .cloned()
            .ok_or_else(|| not_found(T::KIND, name))
    }

    pub fn lookup(&self, kind: Kind, name: &str) -> Result<Workload> {
        self.entries
            .get(&(kind, name.to_owned()))
            .cloned()
            .ok_or_else(|| not_found(kind, name))
    }

    /// ALREADY_EXISTS when `name` is taken for `T`'s kind.
    pub fn vacant<T: Entry>(&self, name: &str) -> Result<()> {
        match self.entries.contains_key(&(T::KIND, name.to_owned())) {
            true => Err(already_exists(T::KIND, name)),
            false => Ok(()),
        }
    }

    /// Adds `x` under its kind and name; ALREADY_EXISTS when the name is taken,
    /// RESOURCE_EXHAUSTED when the node holds its maximum of workloads.
    pub fn insert<T: Entry>(&mut self, x: Arc<T>) -> Result<()> {
        let w = T::wrap(x);
        let key = (w.kind(), w.name());
        self.vacant::<T>(&key.1)?;
        if self.entries.len() >= self.max {
            return Err(RuntimeError::Exhausted(format!(
                "this node holds {} workloads (cells, private cells of executables, executables, VMs and instances, ended ones until freed), its maximum; free some (aer ps, aer free NAME) or boot with a larger aurae.max_workloads",
                self.entries.len()
            )));
        }
        self.events.emit(key.0, &key.1, super::events::What::Created);
        self.entries.insert(key, w);
        Ok(())
    }

    /// Tells that workload `w` (a VM, instance or pod; executables and cells tell their
    /// own) has started, and its end when it comes.
    pub fn follow<T: Entry>(&self, x: &Arc<T>) {
        let w = T::wrap(x.clone());
        let (kind, name) = (w.kind(), w.name());
        self.events.emit(kind, &name, super::events::What::Started);
        let (events, untold) = (self.events.clone(), self.untold.clone());
        lock(&untold).insert((kind, name.clone()));
        tokio::spawn(async move {
            w.wait().await;
            tell_end(&events, &untold, &w);
        });
    }

    pub fn remove<T: Entry>(&mut self, name: &str) {
        if let Some(w) = self.entries.remove(&(T::KIND, name.to_owned())) {
            tell_end(&self.events, &self.untold, &w);
            self.events.emit(T::KIND, name, super::events::What::Freed);
        }
    }

    /// Every workload of `kind` (all when None), cells first, each kind by name.
    pub fn list(&self, kind: Option<Kind>) -> Vec<Workload> {
        self.entries
            .iter()
            .filter(|((k, _), _)| kind.is_none() || kind == Some(*k))
            .map(|(_, w)| w.clone())
            .collect()
    }

    pub fn all<T: Entry + 'static>(&self) -> impl Iterator<Item = &Arc<T>> {
        self.entries
            .range((T::KIND, String::new())..)
            .take_while(|((k, _), _)| *k == T::KIND)
            .filter_map(|(_, w)| T::of(w))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tells how followed workload `w` ended, unless that was told already.
fn tell_end(events: &super::events::Events<Kind>, untold: &std::sync::Mutex<BTreeSet<(Kind, String)>>, w: &Workload) {
    let (kind, name) = (w.kind(), w.name());
    if !lock(untold).remove(&(kind, name.clone())) {
        return;
    }
    let end = match w {
        Workload::VirtualMachine(v) => {
            let v = v.view();
            super::events::end_of(v.phase, &v.error, &v.exit_reason)
        }
        Workload::Instance(i) => {
            let v = i.view();
            let said = v.vm.as_ref().map_or("its auraed exited", |m| m.exit_reason.as_str());
            super::events::end_of(v.phase, &v.error, said)
        }
        Workload::Pod(p) => p.end(),
        Workload::Cell(_) | Workload::Executable(_) => return,
    };
    events.emit(kind, &name, end);
}

impl Workload {
    pub fn kind(&self) -> Kind {
        match self {
            Workload::Cell(_) => Kind::Cell,
            Workload::Executable(_) => Kind::Executable,
            Workload::VirtualMachine(_) => Kind::VirtualMachine,
            Workload::Instance(_) => Kind::Instance,
            Workload::Pod(_) => Kind::Pod,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Workload::Cell(c) => c.name.to_string(),
            Workload::Executable(e) => e.name.to_string(),
            Workload::VirtualMachine(v) => v.name.to_string(),
            Workload::Instance(i) => i.name.to_string(),
            Workload::Pod(p) => p.name.to_string(),
        }
    }

    pub async fn wait(&self) {
        match self {
            Workload::Cell(c) => c.wait().await,
            Workload::Executable(e) => e.wait().await,
            Workload::VirtualMachine(v) => v.wait().await,
            Workload::Instance(i) => i.body.wait().await,
            Workload::Pod(p) => p.wait().await,
        }
    }

    pub fn logs(&self) -> Result<Arc<LogBuffer>> {
        match self {
            Workload::Executable(e) => Ok(e.logs.clone()),
            Workload::VirtualMachine(v) => Ok(v.logs()),
            Workload::Instance(i) => Ok(i.body.logs()),
            Workload::Cell(c) => Err(RuntimeError::Unfit(format!(
                "workload.kind: a cell has no log of its own; read the logs of its executables (aer cell status {} lists them)",
                c.name
            ))),
            // A pod's own log is its instance's console (a container's is `POD/CONTAINER`).
            Workload::Pod(p) => p.instance().map(|i| i.body.logs()).ok_or_else(|| {
                RuntimeError::WrongPhase(format!(
                    "pod '{}' has no instance yet; name a container as {}/CONTAINER",
                    p.name, p.name
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_kind_and_the_command_that_helps() {
        assert_eq!(
            not_found(Kind::VirtualMachine, "v").to_string(),
            "no virtual machine named 'v' (aer vm ls lists them)"
        );
        assert_eq!(
            not_found(Kind::Cell, "nope").to_string(),
            "no cell named 'nope' (aer ps lists them)"
        );
        assert_eq!(
            already_exists(Kind::Cell, "mem").to_string(),
            "a cell named 'mem' already exists; free it (aer cell free mem) or choose another name"
        );
        assert_eq!(
            already_exists(Kind::Executable, "x").to_string(),
            "an executable named 'x' already exists; free it (aer free x) or choose another name"
        );
        assert_eq!(
            already_exists(Kind::Instance, "c1").to_string(),
            "an instance named 'c1' already exists; free it (aer instance free c1) or choose another name"
        );
    }

    #[test]
    fn an_empty_table_finds_nothing_and_every_name_is_vacant() {
        let t = Table::default();
        assert!(matches!(t.get::<Cell>("a"), Err(RuntimeError::NotFound(_))));
        assert!(matches!(t.lookup(Kind::Instance, "a"), Err(RuntimeError::NotFound(_))));
        assert!(t.vacant::<Executable>("a").is_ok());
        assert!(t.list(None).is_empty());
        assert_eq!(t.all::<Executable>().count(), 0);
    }
}
