//! How `aer` prints what a node answers: one text layout and one JSON shape per workload
//! kind and for the node, used by every command.

use crate::pb;
use serde_json::{json, Value};

pub(crate) fn state_name(s: i32) -> String {
    pb::WorkloadState::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("WORKLOAD_STATE_").to_lowercase())
        .unwrap_or_else(|_| s.to_string())
}

pub(crate) fn exec_json(s: &pb::ExecutableStatus) -> Value {
    json!({
        "kind": "executable", "name": s.name, "cell": s.cell, "state": state_name(s.state), "pid": s.pid,
        "exit_code": s.exit_code, "signal": s.signal, "oom_killed": s.oom_killed,
        "started_at_unix_nanos": s.started_at_unix_nanos, "ended_at_unix_nanos": s.ended_at_unix_nanos,
        "cpu_usage_micros": s.cpu_usage_micros, "memory_peak_bytes": s.memory_peak_bytes, "error": s.error,
    })
}

fn seccomp_name(v: i32) -> &'static str {
    match pb::SeccompProfile::try_from(v) {
        Ok(pb::SeccompProfile::Unconfined) => "unconfined",
        Ok(pb::SeccompProfile::Strict) => "strict",
        _ => "default",
    }
}

pub(crate) fn cell_json(s: &pb::CellStatus) -> Value {
    let r = s.resources.clone().unwrap_or_default();
    let u = s.usage.unwrap_or_default();
    let i = s.isolation.unwrap_or_default();
    let c = s.confinement.clone().unwrap_or_default();
    json!({
        "kind": "cell", "name": s.name, "state": state_name(s.state), "executables": s.executables, "error": s.error,
        "resources": {
            "cpu_weight": r.cpu_weight, "cpu_max": r.cpu_max.map(|m| json!({"quota_micros": m.quota_micros, "period_micros": m.period_micros})),
            "cpuset_cpus": r.cpuset_cpus, "cpuset_mems": r.cpuset_mems, "memory_min_bytes": r.memory_min_bytes,
            "memory_low_bytes": r.memory_low_bytes, "memory_high_bytes": r.memory_high_bytes,
            "memory_max_bytes": r.memory_max_bytes, "swap_max_bytes": r.swap_max_bytes, "pids_max": r.pids_max,
            "io_weight": r.io_weight,
        },
        "isolation": {
            "share_host_pid": i.share_host_pid, "share_host_mount": i.share_host_mount,
            "share_host_network": i.share_host_network, "share_host_ipc": i.share_host_ipc,
            "share_host_uts": i.share_host_uts, "share_host_cgroup": i.share_host_cgroup,
        },
        "confinement": {
            "capabilities": c.capabilities, "seccomp": seccomp_name(c.seccomp), "seccomp_deny": c.seccomp_deny,
            "privileged": c.privileged, "own_root": c.own_root,
            "user_namespace_root_uid": c.user_namespace_root_uid,
        },
        "ports": s.ports.iter().map(|p| json!({"host_port": p.host_port, "container_port": p.container_port, "protocol": p.protocol})).collect::<Vec<_>>(),
        "image": s.image.as_ref().map(|i| json!({
            "reference": i.reference, "digest": i.digest, "exposed_ports": i.exposed_ports,
            "entrypoint": i.entrypoint, "env": i.env, "working_dir": i.working_dir, "user": i.user,
        })),
        "usage": {
            "cpu_usage_micros": u.cpu_usage_micros, "cpu_throttled_micros": u.cpu_throttled_micros,
            "cpu_nr_throttled": u.cpu_nr_throttled, "memory_current_bytes": u.memory_current_bytes,
            "memory_peak_bytes": u.memory_peak_bytes, "memory_oom_events": u.memory_oom_events,
            "memory_oom_kill_events": u.memory_oom_kill_events, "pids_current": u.pids_current,
        },
    })
}

pub fn vm_json(v: &pb::VirtualMachineStatus) -> Value {
    json!({
        "kind": "vm", "name": v.name, "state": state_name(v.state), "vcpus": v.vcpus,
        "memory_bytes": v.memory_bytes, "tap_device": v.tap_device, "exit_reason": v.exit_reason,
        "error": v.error, "vmm_pid": v.vmm_pid, "cpu_usage_micros": v.cpu_usage_micros,
        "memory_peak_bytes": v.memory_peak_bytes,
    })
}

pub fn instance_json(i: &pb::InstanceStatus) -> Value {
    json!({
        "kind": "instance", "name": i.name, "state": state_name(i.state),
        "isolation": pb::IsolationKind::try_from(i.isolation).map(|k| k.as_str_name()).unwrap_or("?"),
        "address": i.address, "spiffe_id": i.spiffe_id, "error": i.error, "pid": i.pid,
        "vm": i.vm.as_ref().map(vm_json), "networks": networks_json(&i.networks),
    })
}

fn networks_json(n: &[pb::NetworkAttachment]) -> Value {
    Value::Array(
        n.iter()
            .map(|a| json!({ "interface": a.interface, "bridge": a.bridge, "address": a.address }))
            .collect(),
    )
}

/// "eth1 192.168.50.2/24 on lab0" per attachment.
fn print_networks(n: &[pb::NetworkAttachment]) {
    for a in n {
        println!("network     {} {} on bridge {}", a.interface, a.address, a.bridge);
    }
}

pub(crate) fn ended(s: &pb::ExecutableStatus) -> String {
    match (s.exit_code, s.signal) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(sig)) => format!(
            "signal {}{}",
            nix::sys::signal::Signal::try_from(sig).map_or(sig.to_string(), |s| s.as_str().to_owned()),
            if s.oom_killed { " (OOM)" } else { "" }
        ),
        _ => String::new(),
    }
}

pub(crate) fn print_exec(s: &pb::ExecutableStatus, as_json: bool) {
    if as_json {
        println!("{}", exec_json(s));
        return;
    }
    println!("executable  {} (cell {})", s.name, s.cell);
    println!("state       {} {}", state_name(s.state), ended(s));
    println!("pid         {}", s.pid);
    println!("cpu         {:.3} s", s.cpu_usage_micros as f64 / 1e6);
    println!("memory peak {:.1} MiB", s.memory_peak_bytes as f64 / 1048576.0);
    if s.oom_killed {
        println!("oom killed  yes");
    }
    if !s.error.is_empty() {
        println!("error       {}", s.error);
    }
}

pub(crate) fn print_cell(s: &pb::CellStatus, as_json: bool) {
    if as_json {
        println!("{}", cell_json(s));
        return;
    }
    let v = cell_json(s);
    println!("cell        {}", s.name);
    println!("state       {}", state_name(s.state));
    let set: Vec<String> = v["resources"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "limits      {}",
        if set.is_empty() { "(none)".into() } else { set.join(" ") }
    );
    let shared: Vec<&str> = v["isolation"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.trim_start_matches("share_host_"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "namespaces  {}",
        if shared.is_empty() {
            "all new".into()
        } else {
            format!("new, except host {}", shared.join(","))
        }
    );
    if let Some(i) = &s.image {
        println!("image       {} ({})", i.reference, i.digest);
        if !i.entrypoint.is_empty() {
            println!("entrypoint  {}", i.entrypoint.join(" "));
        }
        if !i.exposed_ports.is_empty() {
            println!("exposes     {}", i.exposed_ports.join(" "));
        }
    }
    if !s.ports.is_empty() {
        let p: Vec<String> = s
            .ports
            .iter()
            .map(|p| format!("node:{} -> {}/{}", p.host_port, p.container_port, p.protocol))
            .collect();
        println!("ports       {}", p.join(", "));
    }
    let c = s.confinement.clone().unwrap_or_default();
    if c.privileged {
        println!("confinement PRIVILEGED: the node's filesystem, every capability, no seccomp");
    } else {
        println!(
            "confinement {}, seccomp {}, capabilities {}",
            if c.own_root {
                "own root"
            } else {
                "NODE'S FILESYSTEM (shares the mount namespace)"
            },
            match c.seccomp_deny.is_empty() {
                true => seccomp_name(c.seccomp).to_owned(),
                false => format!("{} refusing {}", seccomp_name(c.seccomp), c.seccomp_deny.join(",")),
            },
            if c.capabilities.is_empty() {
                "none".into()
            } else {
                c.capabilities.join(",")
            }
        );
        if c.user_namespace_root_uid > 0 {
            println!("userns      root is uid {} on the node", c.user_namespace_root_uid);
        }
    }
    let u = s.usage.unwrap_or_default();
    println!(
        "usage       cpu {:.3} s (throttled {} times, {:.3} s), memory {:.1} MiB (peak {:.1}), pids {}, oom kills {}",
        u.cpu_usage_micros as f64 / 1e6,
        u.cpu_nr_throttled,
        u.cpu_throttled_micros as f64 / 1e6,
        u.memory_current_bytes as f64 / 1048576.0,
        u.memory_peak_bytes as f64 / 1048576.0,
        u.pids_current,
        u.memory_oom_kill_events
    );
    println!("executables {}", s.executables.join(" "));
    if !s.error.is_empty() {
        println!("error       {}", s.error);
    }
}

pub fn print_vm(v: &pb::VirtualMachineStatus, as_json: bool) {
    if as_json {
        println!("{}", vm_json(v));
        return;
    }
    println!("vm          {}", v.name);
    println!("state       {} {}", state_name(v.state), v.exit_reason);
    println!("vcpus       {}", v.vcpus);
    println!("memory      {} MiB", v.memory_bytes >> 20);
    println!("vmm pid     {}", v.vmm_pid);
    println!("cpu         {:.3} s", v.cpu_usage_micros as f64 / 1e6);
    println!("memory peak {:.1} MiB", v.memory_peak_bytes as f64 / 1048576.0);
    if !v.tap_device.is_empty() {
        println!("tap         {}", v.tap_device);
    }
    if !v.error.is_empty() {
        println!("error       {}", v.error);
    }
}

pub fn print_instance(i: &pb::InstanceStatus, as_json: bool) {
    if as_json {
        println!("{}", instance_json(i));
        return;
    }
    println!("instance    {}", i.name);
    println!(
        "state       {} {}",
        state_name(i.state),
        i.vm.as_ref().map_or("", |v| v.exit_reason.as_str())
    );
    println!(
        "isolation   {}",
        pb::IsolationKind::try_from(i.isolation)
            .map(|k| k.as_str_name().trim_start_matches("ISOLATION_KIND_").to_lowercase())
            .unwrap_or_default()
    );
    println!("address     {}", i.address);
    print_networks(&i.networks);
    println!("spiffe id   {}", i.spiffe_id);
    match &i.vm {
        Some(vm) => println!(
            "vm          {} vCPU, {} MiB, tap {}, vmm pid {}",
            vm.vcpus,
            vm.memory_bytes >> 20,
            vm.tap_device,
            vm.vmm_pid
        ),
        None => println!("process     pid {} (in a cell of its own)", i.pid),
    }
    println!("reach it    aer --instance {} node info", i.name);
    if !i.error.is_empty() {
        println!("error       {}", i.error);
    }
}

pub(crate) fn print_status(w: &pb::WorkloadStatus, as_json: bool) {
    match &w.status {
        Some(pb::workload_status::Status::Executable(e)) => print_exec(e, as_json),
        Some(pb::workload_status::Status::Cell(c)) => print_cell(c, as_json),
        Some(pb::workload_status::Status::VirtualMachine(v)) => print_vm(v, as_json),
        Some(pb::workload_status::Status::Instance(i)) => print_instance(i, as_json),
        Some(pb::workload_status::Status::Pod(p)) => print_pod(p, as_json),
        _ => println!("{w:?}"),
    }
}

pub(crate) fn print_info(i: &pb::NodeInfo, as_json: bool) {
    let spawned = match pb::IsolationKind::try_from(i.isolation) {
        Ok(pb::IsolationKind::Vm) => "vm",
        Ok(pb::IsolationKind::Cell) => "cell",
        _ => "",
    };
    let mode = pb::Mode::try_from(i.mode)
        .map(|m| m.as_str_name())
        .unwrap_or("MODE_UNSPECIFIED");
    let mode = mode.trim_start_matches("MODE_").to_lowercase();
    let failures: Vec<_> = i
        .init_failures
        .iter()
        .map(|f| json!({ "step": f.step, "error": f.error }))
        .collect();
    let rule = |r: &pb::PolicyRule| {
        if r.prefix.is_empty() {
            (r.id.clone(), "")
        } else {
            (r.prefix.clone(), " and below")
        }
    };
    let policy: Vec<_> = i
        .policy
        .iter()
        .map(|r| json!({ "id": r.id, "prefix": r.prefix, "role": r.role }))
        .collect();
    if as_json {
        let dhcp_lease = i.dhcp_lease.as_ref().map(|l| {
            json!({
                "address": l.address, "router": l.router, "server": l.server, "dns": l.dns,
                "hostname": l.hostname, "lease_seconds": l.lease_seconds,
                "renew_seconds": l.renew_seconds, "rebind_seconds": l.rebind_seconds,
                "granted_unix_seconds": l.granted_unix_seconds, "renewals": l.renewals,
            })
        });
        println!(
            "{}",
            json!({
                "auraed_version": i.auraed_version, "mode": mode, "pid": i.pid,
                "kernel_release": i.kernel_release, "kernel_version": i.kernel_version,
                "hostname": i.hostname, "uptime_millis": i.uptime_millis,
                "cgroup_controllers": i.cgroup_controllers, "kvm_usable": i.kvm_usable,
                "kvm_detail": i.kvm_detail, "spiffe_id": i.spiffe_id, "peer_spiffe_id": i.peer_spiffe_id,
                "init_failures": failures, "serving_since_boot_micros": i.serving_since_boot_micros,
                "auraed_rss_bytes": i.auraed_rss_bytes, "isolation": spawned,
                "log_budget_bytes": i.log_budget_bytes, "log_held_bytes": i.log_held_bytes,
                "caller_spiffe_id": i.caller_spiffe_id, "caller_role": i.caller_role,
                "forwarded": i.forwarded, "parent_spiffe_id": i.parent_spiffe_id, "policy": policy,
                "identity_not_after_unix_seconds": i.identity_not_after_unix_seconds,
                "identity_renewed_unix_seconds": i.identity_renewed_unix_seconds,
                "identity_note": i.identity_note, "bridges": i.bridges,
                "uplink": i.uplink, "uplink_address": i.uplink_address,
                "dhcp_lease": dhcp_lease, "auraed_open_fds": i.auraed_open_fds,
                "memory_total_bytes": i.memory_total_bytes,
                "memory_available_bytes": i.memory_available_bytes, "oom_kills": i.oom_kills,
            })
        );
        return;
    }
    println!("auraed      {} ({mode}, pid {})", i.auraed_version, i.pid);
    println!("hostname    {}", i.hostname);
    println!("kernel      {} {}", i.kernel_release, i.kernel_version);
    println!(
        "uptime      {:.1} s (serving {:.3} s after kernel start)",
        i.uptime_millis as f64 / 1e3,
        i.serving_since_boot_micros as f64 / 1e6
    );
    println!(
        "cgroups     {}",
        if i.cgroup_controllers.is_empty() {
            "(none)".into()
        } else {
            i.cgroup_controllers.join(" ")
        }
    );
    println!(
        "kvm         {} ({})",
        if i.kvm_usable { "usable" } else { "not usable" },
        i.kvm_detail
    );
    println!("identity    {}", i.spiffe_id);
    if !spawned.is_empty() {
        println!("spawned as  {spawned} (isolation)");
    }
    println!("you are     {} (role {})", i.caller_spiffe_id, i.caller_role);
    if i.forwarded {
        println!("via         {} (forwarded)", i.peer_spiffe_id);
    }
    if !i.parent_spiffe_id.is_empty() {
        println!("parent      {}", i.parent_spiffe_id);
    }
    if !i.identity_note.is_empty() {
        println!("certificate {}", i.identity_note);
    }
    for r in &i.policy {
        let (who, below) = rule(r);
        println!("policy      {:<8} {who}{below}", r.role);
    }
    if !i.uplink.is_empty() {
        let addr = if i.uplink_address.is_empty() {
            "(no address)"
        } else {
            &i.uplink_address
        };
        match &i.dhcp_lease {
            Some(l) => println!(
                "uplink      {} {addr} (DHCP from {}, router {}, lease {} s, renews after {} s, extended {} times)",
                i.uplink,
                l.server,
                if l.router.is_empty() { "none" } else { &l.router },
                l.lease_seconds,
                l.renew_seconds,
                l.renewals
            ),
            None => println!("uplink      {} {addr}", i.uplink),
        }
    }
    if !i.bridges.is_empty() {
        println!("bridges     {} (for pods' extra interfaces)", i.bridges.join(" "));
    }
    println!(
        "auraed      {:.1} MiB resident, {} open descriptors",
        i.auraed_rss_bytes as f64 / 1048576.0,
        i.auraed_open_fds
    );
    println!(
        "memory      {:.0} of {:.0} MiB available; {} workload processes OOM-killed since boot",
        i.memory_available_bytes as f64 / 1048576.0,
        i.memory_total_bytes as f64 / 1048576.0,
        i.oom_kills
    );
    println!(
        "logs        {:.1} of {:.0} MiB",
        i.log_held_bytes as f64 / 1048576.0,
        i.log_budget_bytes as f64 / 1048576.0
    );
    for f in &i.init_failures {
        println!("INIT FAILED {}: {}", f.step, f.error);
    }
}

pub(crate) fn image_json(i: &pb::ImageStatus) -> Value {
    let c = i.config.clone().unwrap_or_default();
    json!({
        "reference": i.reference, "digest": i.digest, "size_bytes": i.size_bytes,
        "layers": i.layers.iter().map(|l| json!({"digest": l.digest, "size_bytes": l.size_bytes})).collect::<Vec<_>>(),
        "config": {
            "entrypoint": c.entrypoint, "cmd": c.cmd, "env": c.env, "working_dir": c.working_dir,
            "user": c.user, "exposed_ports": c.exposed_ports,
        },
        "pulled_unix_seconds": i.pulled_unix_seconds, "fetched_bytes": i.fetched_bytes,
    })
}

pub(crate) fn print_image(i: &pb::ImageStatus, as_json: bool) {
    if as_json {
        println!("{}", image_json(i));
        return;
    }
    let c = i.config.clone().unwrap_or_default();
    println!("reference   {}", i.reference);
    println!("digest      {}", i.digest);
    println!(
        "size        {:.1} MiB in {} layers (fetched {:.1} MiB by the last pull)",
        i.size_bytes as f64 / 1048576.0,
        i.layers.len(),
        i.fetched_bytes as f64 / 1048576.0
    );
    for l in &i.layers {
        println!("  layer     {} {:.1} MiB", l.digest, l.size_bytes as f64 / 1048576.0);
    }
    println!("entrypoint {:?}", c.entrypoint);
    println!("cmd        {:?}", c.cmd);
    println!("env        {}", c.env.join(" "));
    println!("workdir    {}", c.working_dir);
    if !c.user.is_empty() {
        println!("user       {}", c.user);
    }
    if !c.exposed_ports.is_empty() {
        println!("ports      {}", c.exposed_ports.join(" "));
    }
}

pub(crate) fn done(json: bool, what: &str) {
    if json {
        println!("{}", json!({ "ok": true, "message": what }));
    } else {
        println!("{what}");
    }
}

pub(crate) fn phase_name(p: i32) -> &'static str {
    match pb::PodPhase::try_from(p) {
        Ok(pb::PodPhase::Pending) => "Pending",
        Ok(pb::PodPhase::Running) => "Running",
        Ok(pb::PodPhase::Succeeded) => "Succeeded",
        Ok(pb::PodPhase::Failed) => "Failed",
        Ok(pb::PodPhase::Unknown) => "Unknown",
        _ => "?",
    }
}

fn container_state(c: &pb::ContainerStatus) -> String {
    match pb::ContainerState::try_from(c.state) {
        Ok(pb::ContainerState::Running) => "Running".into(),
        Ok(pb::ContainerState::Waiting) => format!("Waiting ({})", c.reason),
        Ok(pb::ContainerState::Terminated) => "Terminated".into(),
        _ => "?".into(),
    }
}

pub(crate) fn ports_text(p: &pb::PodStatus) -> String {
    p.ports
        .iter()
        .map(|x| format!("{}->{}/{}", x.host_port, x.container_port, x.protocol))
        .collect::<Vec<_>>()
        .join(",")
}

fn termination_text(t: &pb::ContainerTermination) -> String {
    match (t.exit_code, t.signal) {
        (Some(c), _) => format!("{} (exit {c})", t.reason),
        (_, Some(s)) => format!("{} (signal {s})", t.reason),
        _ => t.reason.clone(),
    }
}

pub fn pod_json(p: &pb::PodStatus) -> Value {
    json!({
        "kind": "pod", "name": p.name, "phase": phase_name(p.phase), "reason": p.reason,
        "pod_ip": p.pod_ip,
        "isolation": pb::IsolationKind::try_from(p.isolation).map(|k| k.as_str_name()).unwrap_or("?"),
        "ports": p.ports.iter().map(|x| json!({
            "container": x.container, "host_port": x.host_port,
            "container_port": x.container_port, "protocol": x.protocol,
        })).collect::<Vec<_>>(),
        "containers": p.containers.iter().map(|c| json!({
            "name": c.name, "image": c.image, "image_digest": c.image_digest,
            "state": container_state(c), "restart_count": c.restart_count,
            "last_termination": c.last_termination.as_ref().map(|t| json!({
                "exit_code": t.exit_code, "signal": t.signal, "reason": t.reason,
                "started_at_unix_nanos": t.started_at_unix_nanos,
                "finished_at_unix_nanos": t.finished_at_unix_nanos,
            })),
        })).collect::<Vec<_>>(),
        "instance": p.instance.as_ref().map(instance_json),
        "instance_restarts": p.instance_restarts,
        "last_instance_end": p.last_instance_end,
        "networks": networks_json(&p.networks),
    })
}

pub fn print_pod(p: &pb::PodStatus, as_json: bool) {
    if as_json {
        println!("{}", pod_json(p));
        return;
    }
    let isolation = match pb::IsolationKind::try_from(p.isolation) {
        Ok(pb::IsolationKind::Vm) => "vm",
        Ok(pb::IsolationKind::Cell) => "cell",
        _ => "",
    };
    println!("pod         {}", p.name);
    println!("phase       {}", phase_name(p.phase));
    if !p.reason.is_empty() {
        println!("reason      {}", p.reason);
    }
    println!("pod ip      {}", p.pod_ip);
    print_networks(&p.networks);
    println!("isolation   {isolation}");
    if !p.ports.is_empty() {
        println!("ports       {}", ports_text(p));
    }
    for c in &p.containers {
        let last = c.last_termination.as_ref().map(termination_text).unwrap_or_default();
        println!(
            "container   {:<16} {:<28} restarts {:<3} {}",
            c.name,
            container_state(c),
            c.restart_count,
            if last.is_empty() {
                String::new()
            } else {
                format!("last: {last}")
            }
        );
    }
    if let Some(i) = &p.instance {
        println!("instance    {} {}", i.address, i.spiffe_id);
    }
    if p.instance_restarts > 0 {
        println!(
            "replaced    {} time(s); the last instance lost: {}",
            p.instance_restarts, p.last_instance_end
        );
    }
}
