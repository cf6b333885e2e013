//! The runtime's lifecycle without root or QEMU: a fixture directory stands in for the
//! workloads cgroup and `FakeLauncher` for clone3, the reaper and cgroup.kill. Each test
//! asserts on the fixture tree (the cgroups the runtime made or removed), the fake's
//! processes and the table, never only on a return value.

use crate::runtime::error::RuntimeError;
use crate::runtime::launcher::testing::FakeLauncher;
use crate::runtime::launcher::StartError;
use crate::runtime::names::{CellName, ExecName};
use crate::runtime::spec::{CellSpec, ExecutableSpec};
use crate::runtime::sys::child::Stage;
use crate::runtime::{Kind, Phase, Runtime, View};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    fake: Arc<FakeLauncher>,
    rt: Runtime,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("aurae");
    std::fs::create_dir(&root).unwrap();
    let fake = FakeLauncher::new(&root);
    let rt = Runtime::with_launcher(root.clone(), fake.clone());
    Rig {
        _dir: dir,
        root,
        fake,
        rt,
    }
}

fn cell(name: &str) -> CellSpec {
    CellSpec::named(name)
}

/// An exec session of `/bin/sh` in cell `name`, without a terminal.
fn session(name: &str) -> crate::runtime::attach::AttachSpec {
    crate::runtime::attach::AttachSpec {
        cell: CellName::parse(name).unwrap(),
        argv: vec!["/bin/sh".into()],
        env: Default::default(),
        cwd: None,
        uid: None,
        gid: None,
        tty: false,
        size: None,
    }
}

pub(super) fn exe(name: &str, cell: Option<&str>) -> ExecutableSpec {
    ExecutableSpec {
        name: ExecName::parse(name).unwrap(),
        argv: vec!["/bin/true".into()],
        env: Default::default(),
        cwd: None,
        uid: None,
        gid: None,
        cell: cell.map(|c| CellName::parse(c).unwrap()),
        io: Default::default(),
    }
}

/// Every directory below `root`, relative, sorted: the cgroups the runtime left.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                out.push(e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned());
                todo.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn phase(v: View) -> Option<Phase> {
    match v {
        View::Cell(c) => Some(c.phase),
        View::Executable(e) => e.phase,
        View::VirtualMachine(v) => v.phase,
        View::Instance(i) => i.phase,
        View::Pod(_) => None,
    }
}

const GRACE: Duration = Duration::from_millis(20);

#[tokio::test]
async fn a_cell_runs_its_init_in_a_leaf_of_its_own_and_free_leaves_nothing() {
    let r = rig();
    let v = r.rt.run_cell(cell("web"), None, "").await.unwrap();
    assert_eq!(v.phase, Phase::Running);
    assert_eq!(tree(&r.root), ["web", "web/_init"]);
    assert_eq!(r.fake.pids_in(&r.root.join("web/_init")).len(), 1, "the cell's init");

    let e = r.rt.run_cell(cell("web"), None, "").await.unwrap_err();
    assert!(matches!(e, RuntimeError::AlreadyExists(_)), "{e}");
    assert!(e.to_string().starts_with("a cell named 'web' already exists"), "{e}");
    assert_eq!(r.fake.running(), 1, "a refused duplicate starts nothing");

    let e = r.rt.free(Kind::Cell, "web").await.unwrap_err();
    assert!(e.to_string().contains("stop it first"), "{e}");
    assert_eq!(tree(&r.root), ["web", "web/_init"], "a refused free changes nothing");

    let v = r.rt.stop(Kind::Cell, "web", libc::SIGTERM, GRACE).await.unwrap();
    assert_eq!(phase(v), Some(Phase::Stopped));
    assert_eq!(r.fake.running(), 0, "stop killed the cell's init");
    r.rt.free(Kind::Cell, "web").await.unwrap();
    assert!(tree(&r.root).is_empty(), "{:?}", tree(&r.root));
    assert!(r.rt.list(None).is_empty());
    let e = r.rt.status(Kind::Cell, "web").unwrap_err();
    assert_eq!(e.to_string(), "no cell named 'web' (aer ps lists them)");
}

#[tokio::test]
async fn an_executable_gets_a_private_cell_that_ends_with_it_and_goes_at_free() {
    let r = rig();
    let v = r.rt.run_executable(exe("job", None)).await.unwrap();
    assert_eq!(v.phase, Some(Phase::Running));
    assert_eq!(tree(&r.root), ["job", "job/_init", "job/_x.job"]);
    let pid = r.fake.pids_in(&r.root.join("job/_x.job"))[0];
    assert_eq!(v.pid, pid as u32);

    r.fake.exit(pid, 3);
    let v = r.rt.wait(Kind::Executable, "job").await.unwrap();
    let View::Executable(v) = v else { panic!() };
    assert_eq!((v.phase, v.exit_code), (Some(Phase::Exited), Some(3)));
    assert_eq!(
        phase(r.rt.status(Kind::Cell, "job").unwrap()),
        Some(Phase::Stopped),
        "the private cell ended before the exit was published"
    );
    assert_eq!(r.fake.running(), 0);

    let e = r.rt.free(Kind::Cell, "job").await.unwrap_err();
    assert!(e.to_string().contains("free the executable instead"), "{e}");
    r.rt.free(Kind::Executable, "job").await.unwrap();
    assert!(tree(&r.root).is_empty(), "{:?}", tree(&r.root));
    assert!(
        r.rt.list(None).is_empty(),
        "neither the executable nor its cell is listed"
    );
}

/// An executable's life as events, in order, after the point a reader had: its private
/// cell made and started, it made and started, its end with the code, the cell stopped,
/// both freed; a reader resuming after the start sees the rest.
#[tokio::test]
async fn an_executables_life_is_told_as_events_in_order() {
    use crate::runtime::events::What;
    let r = rig();
    let events = r.rt.events();
    let before = events.last();
    r.rt.run_executable(exe("job", None)).await.unwrap();
    let pid = r.fake.pids_in(&r.root.join("job/_x.job"))[0];
    r.fake.exit(pid, 3);
    r.rt.wait(Kind::Executable, "job").await.unwrap();
    r.rt.free(Kind::Executable, "job").await.unwrap();
    let got: Vec<(Kind, String, What)> = events
        .read(before, 100)
        .events
        .into_iter()
        .map(|e| (e.kind, e.name, e.what))
        .collect();
    let exe_events: Vec<&What> = got.iter().filter(|e| e.0 == Kind::Executable).map(|e| &e.2).collect();
    assert_eq!(
        exe_events,
        [
            &What::Created,
            &What::Started,
            &What::Exited { code: 3, oom: false },
            &What::Freed
        ],
        "{got:?}"
    );
    assert_eq!(
        got.iter()
            .filter(|e| e.0 == Kind::Cell)
            .map(|e| &e.2)
            .collect::<Vec<_>>(),
        [&What::Created, &What::Started, &What::Stopped, &What::Freed],
        "its private cell: {got:?}"
    );
    let started = events
        .read(before, 100)
        .events
        .into_iter()
        .find(|e| e.what == What::Started && e.kind == Kind::Executable)
        .unwrap()
        .seq;
    let rest = events.read(started, 100);
    assert_eq!(rest.missed, 0);
    assert_eq!(rest.events[0].seq, started + 1, "nothing skipped");
    let next = rest.events.iter().find(|e| e.kind == Kind::Executable).unwrap();
    assert_eq!(next.what, What::Exited { code: 3, oom: false });
}

/// A cell whose init never says it is ready (blocked before it could) costs its caller
/// only the deadline: then it is killed, the cell removed and the name free again.
#[tokio::test]
async fn a_cell_whose_init_never_reports_is_removed_at_the_callers_deadline() {
    let r = rig();
    *r.fake.hang_next_holder.lock().unwrap() = true;
    let mut spec = cell("stuck");
    spec.ready_within = std::time::Duration::from_millis(50);
    let e = r.rt.run_cell(spec, None, "").await.unwrap_err();
    assert!(matches!(e, RuntimeError::DeadlineExceeded(_)), "{e:?}");
    assert!(e.to_string().contains("did not report ready"), "{e}");
    assert!(tree(&r.root).is_empty(), "{:?}", tree(&r.root));
    assert!(r.rt.list(None).is_empty());
    assert_eq!(r.fake.running(), 0, "the init was killed");
    r.rt.run_cell(cell("stuck"), None, "").await.unwrap();
}

/// A start that loses the race with its own rollback: the caller's deadline passes, and
/// only then does the init land in the cell's cgroup (clone3 runs on a thread of its own).
/// The rollback waits for the start to end, kills what landed and removes the cgroup, so
/// nothing runs in a cgroup no workload owns and the name is free.
#[tokio::test]
async fn an_init_that_lands_after_the_deadline_is_killed_and_its_cgroup_removed() {
    let r = rig();
    *r.fake.late_next_holder.lock().unwrap() = true;
    let mut spec = cell("late");
    spec.ready_within = Duration::from_millis(20);
    let e = r.rt.run_cell(spec, None, "").await.unwrap_err();
    assert!(matches!(e, RuntimeError::DeadlineExceeded(_)), "{e:?}");
    assert_eq!(r.fake.running(), 0, "the late init was killed");
    assert!(tree(&r.root).is_empty(), "{:?}", tree(&r.root));
    assert!(r.rt.list(None).is_empty());
    r.rt.run_cell(cell("late"), None, "").await.unwrap();
}

#[tokio::test]
async fn a_refused_start_leaves_no_cgroup_no_private_cell_and_no_entry() {
    let r = rig();
    *r.fake.fail_next_exec.lock().unwrap() = Some(StartError::Child {
        stage: Stage::Exec,
        errno: libc::ENOENT,
    });
    let e = r.rt.run_executable(exe("nope", None)).await.unwrap_err();
    assert!(matches!(e, RuntimeError::NotFound(_)), "{e:?}");
    assert_eq!(e.to_string(), "argv[0]: '/bin/true' does not exist");
    assert!(tree(&r.root).is_empty(), "{:?}", tree(&r.root));
    assert!(r.rt.list(None).is_empty());
    assert_eq!(r.fake.running(), 0, "the private cell's init was killed");

    // The same name works afterwards: nothing of the refused one is in the way.
    r.rt.run_executable(exe("nope", None)).await.unwrap();
}

#[tokio::test]
async fn names_collide_across_kinds_with_a_message_that_says_what_to_do() {
    let r = rig();
    r.rt.run_cell(cell("web"), None, "").await.unwrap();
    let e = r.rt.run_executable(exe("web", None)).await.unwrap_err();
    assert!(matches!(e, RuntimeError::AlreadyExists(_)), "{e}");
    assert!(e.to_string().contains("pass cell: 'web' to run inside it"), "{e}");
    assert_eq!(tree(&r.root), ["web", "web/_init"]);

    r.rt.run_executable(exe("srv", Some("web"))).await.unwrap();
    let e = r.rt.run_executable(exe("srv", Some("web"))).await.unwrap_err();
    assert!(
        e.to_string().starts_with("an executable named 'srv' already exists"),
        "{e}"
    );
    assert_eq!(tree(&r.root), ["web", "web/_init", "web/_x.srv"]);
    assert_eq!(r.fake.running(), 2);

    let e = r.rt.run_executable(exe("x", Some("nope"))).await.unwrap_err();
    assert!(e.to_string().starts_with("no cell named 'nope'"), "{e}");
}

#[tokio::test]
async fn stopping_a_cell_stops_nested_cells_and_free_removes_the_subtree() {
    let r = rig();
    let e = r.rt.run_cell(cell("a/b"), None, "").await.unwrap_err();
    assert!(e.to_string().contains("needs its parent cell 'a'"), "{e}");
    assert!(tree(&r.root).is_empty());

    r.rt.run_cell(cell("a"), None, "").await.unwrap();
    r.rt.run_cell(cell("a/b"), None, "").await.unwrap();
    r.rt.run_executable(exe("x", Some("a/b"))).await.unwrap();
    assert_eq!(tree(&r.root), ["a", "a/_init", "a/b", "a/b/_init", "a/b/_x.x"]);

    let v = r.rt.stop(Kind::Cell, "a", libc::SIGTERM, GRACE).await.unwrap();
    assert_eq!(phase(v), Some(Phase::Stopped));
    assert_eq!(phase(r.rt.status(Kind::Cell, "a/b").unwrap()), Some(Phase::Stopped));
    let View::Executable(x) = r.rt.wait(Kind::Executable, "x").await.unwrap() else {
        panic!()
    };
    assert_eq!((x.phase, x.signal), (Some(Phase::Killed), Some(libc::SIGKILL)));
    assert_eq!(r.fake.running(), 0);

    r.rt.free(Kind::Cell, "a").await.unwrap();
    assert!(tree(&r.root).is_empty(), "{:?}", tree(&r.root));
    assert!(r.rt.list(None).is_empty(), "nested cell and executable went too");
}

#[tokio::test]
async fn a_cell_whose_init_dies_fails_and_its_processes_go() {
    let r = rig();
    r.rt.run_cell(cell("web"), None, "").await.unwrap();
    r.rt.run_executable(exe("srv", Some("web"))).await.unwrap();
    let init = r.fake.pids_in(&r.root.join("web/_init"))[0];
    r.fake.exit(init, 1);
    let View::Cell(c) = r.rt.wait(Kind::Cell, "web").await.unwrap() else {
        panic!()
    };
    assert_eq!(c.phase, Phase::Failed);
    assert!(c.error.contains("ended unexpectedly"), "{}", c.error);
    let View::Executable(x) = r.rt.wait(Kind::Executable, "srv").await.unwrap() else {
        panic!()
    };
    assert_eq!(
        x.phase,
        Some(Phase::Killed),
        "a cell without its namespaces is not a cell"
    );
    assert_eq!(r.fake.running(), 0);
}

#[tokio::test]
async fn the_workload_beyond_the_maximum_is_refused_and_leaves_nothing() {
    let r = rig();
    r.rt.host.table().max = 3;
    r.rt.run_cell(cell("a"), None, "").await.unwrap();
    r.rt.run_cell(cell("b"), None, "").await.unwrap();
    // An executable without a cell needs two entries (its private cell and itself).
    let e = r.rt.run_executable(exe("x", None)).await.unwrap_err();
    assert!(matches!(e, RuntimeError::Exhausted(_)), "{e}");
    assert!(e.to_string().contains("aurae.max_workloads"), "{e}");
    assert_eq!(
        tree(&r.root),
        ["a", "a/_init", "b", "b/_init"],
        "its private cell went too"
    );
    r.rt.run_cell(cell("c"), None, "").await.unwrap();
    let e = r.rt.run_cell(cell("d"), None, "").await.unwrap_err();
    assert!(matches!(e, RuntimeError::Exhausted(_)), "{e}");
    assert_eq!(r.rt.list(None).len(), 3, "the maximum, never more");
    assert!(!tree(&r.root).iter().any(|d| d.starts_with('d')), "{:?}", tree(&r.root));
}

/// A private cell auraed made for one of its own workloads (here an executable's; a VM's
/// VMM and an instance's are made the same way) takes no one's executable or exec: the
/// refusal names the field and the owner, and nothing starts there.
#[tokio::test]
async fn a_private_cell_is_no_target_for_an_executable_or_an_exec() {
    let r = rig();
    r.rt.run_executable(exe("own", None)).await.unwrap();
    let (running, listed) = (r.fake.running(), r.rt.list(None).len());
    let e = r.rt.run_executable(exe("intruder", Some("own"))).await.unwrap_err();
    assert!(matches!(e, RuntimeError::PrivateCell { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "cell: cell 'own' is the private cell of executable 'own'; only cells made with RunCell take executables (aer cell create NAME, then --cell NAME)"
    );
    let e = r.rt.attach(session("own")).await.err().unwrap();
    assert!(
        e.to_string()
            .starts_with("start.cell: cell 'own' is the private cell of executable 'own'"),
        "{e}"
    );
    assert_eq!(r.fake.running(), running, "nothing started");
    assert_eq!(r.rt.list(None).len(), listed, "nothing listed");
}

/// An exec session is a workload like any other: `List` shows it (`exec-N`, in its cell),
/// it counts against the node's maximum (the one beyond is refused, nothing started), and
/// it leaves the table when the session ends.
#[tokio::test]
async fn exec_sessions_are_listed_counted_and_gone_when_they_end() {
    let r = rig();
    r.rt.run_cell(cell("box"), None, "").await.unwrap();
    let a = r.rt.attach(session("box")).await.unwrap();
    let name = a.process.name.to_string();
    assert!(name.starts_with("exec-"), "{name}");
    let listed = r.rt.list(Some(Kind::Executable));
    assert_eq!(listed.len(), 1, "the session is listed");
    // At the maximum, the next session is refused and starts nothing.
    let held = r.rt.list(None).len();
    r.rt.host.table().max = held;
    let running = r.fake.running();
    let e = r.rt.attach(session("box")).await.err().unwrap();
    assert!(matches!(e, RuntimeError::Exhausted(_)), "{e:?}");
    assert_eq!(r.fake.running(), running);
    r.rt.detach(&a.process).await;
    assert!(r.rt.list(Some(Kind::Executable)).is_empty(), "gone with its session");
    assert!(!tree(&r.root).iter().any(|d| d.contains(&name)), "{:?}", tree(&r.root));
}

/// auraed runs itself again (a VMM, a cell fallback's child) from /proc/self/exe in a
/// private cell of its own: the start succeeds, the cell and the process's leaf exist, and
/// a stop and discard leave nothing. (A wrong program path fails here as execve would.)
#[tokio::test]
async fn auraed_runs_itself_again_in_a_private_cell() {
    let r = rig();
    let name = ExecName::parse("child-1").unwrap();
    let p = crate::runtime::process::launch_self(
        &r.rt.host,
        &name,
        vec!["auraed".into(), "daemon".into()],
        crate::runtime::spec::Isolation::default(),
        crate::runtime::spec::Resources::default(),
        crate::runtime::logs::Stream::Stdout,
        None,
        crate::runtime::spec::Confinement::INSTANCE,
        Default::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.phase(), Phase::Running);
    assert!(r.root.join("child-1").is_dir(), "its private cell");
    assert_eq!(r.fake.running(), 2, "its cell's init and itself");
    p.stop(libc::SIGKILL, Duration::ZERO).await;
    p.discard(&r.rt.host, "child-1").await.unwrap();
    assert!(!r.root.join("child-1").exists(), "nothing left");
    assert_eq!(r.fake.running(), 0);
}
pub(crate) mod instance;
mod pod;
mod pod_renew;
mod steps;
mod vm;
