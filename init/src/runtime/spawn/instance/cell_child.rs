//! The cell fallback: where KVM is not usable, the child auraed runs as a daemon in a
//! private cell with every namespace new, wired to the bridges with veth pairs.

use super::*;

/// The cell fallback: the child auraed as a daemon in a private cell with every
/// namespace new, a veth pair from the bridge to its eth0 and one from each attachment's
/// bridge to eth1, ...; returns the child and the veths' host ends.
pub(super) async fn start_cell_child(
    host: &Host,
    spec: &InstanceSpec,
    pki_dir: &std::path::Path,
    bridge: &str,
    net: addressing::ChildNet,
    address: SocketAddr,
) -> Result<(Arc<Process>, Vec<String>)> {
    // In the node's network namespace it listens on its loopback port only, and makes no
    // bridge (the node's would be in the way).
    let listen = match spec.host_network {
        true => address.to_string(),
        false => format!("0.0.0.0:{CHILD_PORT}"),
    };
    let mut argv: Vec<String> = vec![
        "auraed".into(),
        "daemon".into(),
        "--listen".into(),
        listen,
        "--pki-dir".into(),
        pki_dir.to_string_lossy().into_owned(),
        "--spawned-in-cell".into(),
        // Its own root hides /var/lib/aurae; its own /run (64 MiB) holds its images.
        "--image-store".into(),
        "/run/aurae/images".into(),
        "--image-store-mib".into(),
        "32".into(),
    ];
    if !spec.host_network {
        argv.extend(["--bridge-ip".into(), net.bridge.to_string()]);
    }
    if let Some(h) = &spec.hostname {
        argv.extend(["--hostname".into(), h.clone()]);
    }
    let resources = Resources {
        memory_max: Some(spec.memory_bytes),
        ..Resources::default()
    };
    let e = process::launch_self(
        host,
        &spec.name,
        argv,
        Isolation {
            network: !spec.host_network,
            ..Isolation::default()
        },
        resources,
        logs::Stream::Stdout,
        None,
        Confinement::INSTANCE,
        crate::runtime::spec::NodeBinds {
            run: vec![pki_dir.to_owned()],
            pod: spec.pod_dir.clone(),
        },
    )
    .await?;
    let mut veths = Vec::new();
    let plumbed = match e.own_cell_holder_pid(host.sys.as_ref()) {
        _ if spec.host_network => Ok(()),
        None => Err(RuntimeError::StartFailed(
            "the child's cell has no holder to take its network namespace from".into(),
        )),
        Some(pid) => plumb_cell_child(host, spec, pid, bridge, net, &mut veths).await,
    };
    if let Err(err) = plumbed {
        e.stop(libc::SIGKILL, Duration::ZERO).await;
        let _ = e.discard(host, spec.name.as_str()).await;
        for v in &veths {
            let _ = host.devices.remove_veth(v);
        }
        return Err(err);
    }
    Ok((e, veths))
}

/// eth0 on the bridge, then each attachment; `veths` gets each host end as it is made.
pub(super) async fn plumb_cell_child(
    host: &Host,
    spec: &InstanceSpec,
    holder: i32,
    bridge: &str,
    net: addressing::ChildNet,
    veths: &mut Vec<String>,
) -> Result<()> {
    use crate::runtime::spawn::veth::Inside;
    let eth0 = crate::net::Ipv4Cidr {
        addr: net.ip,
        prefix: 24,
    };
    let mut wanted = vec![(bridge.to_owned(), "eth0".to_owned(), eth0, Some(net.gateway))];
    for (k, a) in spec.attachments.iter().enumerate() {
        wanted.push((a.bridge.clone(), format!("eth{}", k + 1), a.address, None));
    }
    for (on, name, address, gateway) in wanted {
        let (n, _) = vm::next_tap(host);
        let host_end = format!("aveth{n}");
        veths.push(host_end.clone());
        let inside = Inside {
            name: &name,
            address,
            gateway,
        };
        host.devices.make_veth(&host_end, holder, &on, inside).await?;
    }
    Ok(())
}
