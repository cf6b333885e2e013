//! Stats for kubelet's summary API (`kubectl top`, metrics-server, evictions):
//! `ContainerStats`, `ListContainerStats`, `PodSandboxStats`, `ListPodSandboxStats`, read
//! from each container's cgroup in its sandbox's instance. CPU is the cgroup's
//! `usage_usec` in nanoseconds and, from the second reading on, the rate since the one
//! before in nanocores; memory is `memory.current` and the working set
//! (`memory.current` less `inactive_file`, as kubelet computes it); a sandbox's figures
//! are the sum of its running containers' (the instance's own kernel and auraed are the
//! RuntimeClass overhead, not counted here).

use super::state::Container;
use super::{unix_nanos, Cri, CriError};
use crate::runtime::cgroup::Usage;
use aurae_proto::cri;

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// The rate in nanocores between two readings (timestamp ns, usage ns); None without a
/// usable earlier one.
pub fn nano_cores(before: Option<(i64, u64)>, now: (i64, u64)) -> Option<u64> {
    let (t0, u0) = before?;
    let dt = u64::try_from(now.0 - t0).ok().filter(|d| *d > 0)?;
    let du = now.1.checked_sub(u0)?;
    Some(u64::try_from(u128::from(du) * 1_000_000_000 / u128::from(dt)).unwrap_or(u64::MAX))
}

fn cpu(ts: i64, u: &Usage, before: Option<(i64, u64)>) -> cri::CpuUsage {
    let total = u.cpu_usage_micros.saturating_mul(1000);
    cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: value(total),
        usage_nano_cores: nano_cores(before, (ts, total)).and_then(value),
    }
}

fn memory(ts: i64, u: &Usage) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: value(u.memory_current_bytes.saturating_sub(u.memory_inactive_file_bytes)),
        available_bytes: None,
        usage_bytes: value(u.memory_current_bytes),
        rss_bytes: None,
        page_faults: None,
        major_page_faults: None,
    }
}

fn attributes(c: &Container) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: Some(c.metadata.clone()),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
    }
}

impl Cri {
    /// One container's stats with its usage (None: it runs no more, so it has none), and
    /// the usage for its sandbox's sum.
    async fn stats_of(&self, id: &str) -> Option<(cri::ContainerStats, Option<Usage>)> {
        let (attrs, pod, name, before) = {
            let t = self.table();
            let c = t.container(id)?;
            let pod = t.sandbox(&c.sandbox_id)?.pod.clone();
            (attributes(c), pod, c.name.clone(), c.last_cpu)
        };
        let ts = unix_nanos(std::time::SystemTime::now());
        let usage = self.rt.container_usage(&pod, &name).await.ok();
        let stats = cri::ContainerStats {
            attributes: Some(attrs),
            cpu: usage.as_ref().map(|u| cpu(ts, u, before)),
            memory: usage.as_ref().map(|u| memory(ts, u)),
            writable_layer: None,
            swap: None,
        };
        if let Some(u) = &usage {
            if let Some(c) = self.table().container_mut(id) {
                c.last_cpu = Some((ts, u.cpu_usage_micros.saturating_mul(1000)));
            }
        }
        Some((stats, usage))
    }

    pub async fn container_stats(
        &self,
        r: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, CriError> {
        let (stats, _) = self.stats_of(&r.container_id).await.ok_or_else(|| {
            CriError::NotFound(format!("container_id: no container '{}' on this node", r.container_id))
        })?;
        Ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    pub async fn list_container_stats(&self, r: cri::ListContainerStatsRequest) -> cri::ListContainerStatsResponse {
        let ids: Vec<String> = {
            let f = r.filter.map(|f| cri::ContainerFilter {
                id: f.id,
                state: None,
                pod_sandbox_id: f.pod_sandbox_id,
                label_selector: f.label_selector,
            });
            let t = self.table();
            t.containers(f.as_ref()).iter().map(|c| c.id.clone()).collect()
        };
        let mut stats = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((s, _)) = self.stats_of(&id).await {
                stats.push(s);
            }
        }
        cri::ListContainerStatsResponse { stats }
    }

    /// A sandbox's stats: its containers' and their sum.
    async fn sandbox_stats(&self, id: &str) -> Option<cri::PodSandboxStats> {
        let (attrs, containers) = {
            let t = self.table();
            let s = t.sandbox(id)?;
            let attrs = cri::PodSandboxAttributes {
                id: s.id.clone(),
                metadata: Some(s.metadata.clone()),
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
            };
            let f = cri::ContainerFilter {
                pod_sandbox_id: s.id.clone(),
                ..Default::default()
            };
            let ids: Vec<String> = t.containers(Some(&f)).iter().map(|c| c.id.clone()).collect();
            (attrs, ids)
        };
        let ts = unix_nanos(std::time::SystemTime::now());
        let mut sum = Usage::default();
        let mut stats = Vec::new();
        for c in containers {
            let Some((s, usage)) = self.stats_of(&c).await else {
                continue;
            };
            if let Some(u) = usage {
                sum.cpu_usage_micros += u.cpu_usage_micros;
                sum.memory_current_bytes += u.memory_current_bytes;
                sum.memory_inactive_file_bytes += u.memory_inactive_file_bytes;
                sum.pids_current += u.pids_current;
            }
            stats.push(s);
        }
        let before = self.table().sandbox(id).and_then(|s| s.last_cpu);
        let total = sum.cpu_usage_micros.saturating_mul(1000);
        if let Some(s) = self.table().sandbox_mut(id) {
            s.last_cpu = Some((ts, total));
        }
        Some(cri::PodSandboxStats {
            attributes: Some(attrs),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cpu(ts, &sum, before)),
                memory: Some(memory(ts, &sum)),
                network: None,
                process: Some(cri::ProcessUsage {
                    timestamp: ts,
                    process_count: value(sum.pids_current),
                }),
                containers: stats,
            }),
            windows: None,
        })
    }

    pub async fn pod_sandbox_stats(
        &self,
        r: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, CriError> {
        let stats = self
            .sandbox_stats(&r.pod_sandbox_id)
            .await
            .ok_or_else(|| super::sandbox::no_sandbox(&r.pod_sandbox_id))?;
        Ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
    }

    pub async fn list_pod_sandbox_stats(&self, r: cri::ListPodSandboxStatsRequest) -> cri::ListPodSandboxStatsResponse {
        let ids: Vec<String> = {
            let f = r.filter.map(|f| cri::PodSandboxFilter {
                id: f.id,
                state: None,
                label_selector: f.label_selector,
            });
            let t = self.table();
            t.sandboxes(f.as_ref()).iter().map(|s| s.id.clone()).collect()
        };
        let mut stats = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.sandbox_stats(&id).await {
                stats.push(s);
            }
        }
        cri::ListPodSandboxStatsResponse { stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_rate_is_nanocores_between_two_readings() {
        assert_eq!(nano_cores(None, (10, 5)), None, "one reading has no rate");
        // Half a CPU: 0.5 s of CPU in 1 s.
        assert_eq!(
            nano_cores(Some((0, 0)), (1_000_000_000, 500_000_000)),
            Some(500_000_000)
        );
        assert_eq!(nano_cores(Some((5, 9)), (5, 9)), None, "no time passed");
        assert_eq!(nano_cores(Some((0, 9)), (10, 5)), None, "a counter that went back");
        let u = Usage {
            cpu_usage_micros: 3,
            memory_current_bytes: 10 << 20,
            memory_inactive_file_bytes: 4 << 20,
            ..Default::default()
        };
        let m = memory(7, &u);
        assert_eq!(m.working_set_bytes.unwrap().value, 6 << 20, "less the droppable cache");
        assert_eq!(m.usage_bytes.unwrap().value, 10 << 20);
        assert_eq!(cpu(7, &u, None).usage_core_nano_seconds.unwrap().value, 3000);
    }
}
