//! CRI list filters applied to netready's own objects, with containerd's semantics: every set
//! field must match, ids match by prefix (containerd resolves truncated ids), labels all equal.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn id_matches(id: &str, wanted: &str) -> bool {
    wanted.is_empty() || id.starts_with(wanted)
}

/// Whether a sandbox passes a `ListPodSandbox` filter.
pub fn pod_sandbox(s: &cri::PodSandbox, f: Option<&cri::PodSandboxFilter>) -> bool {
    let Some(f) = f else { return true };
    id_matches(&s.id, &f.id)
        && f.state.as_ref().is_none_or(|st| st.state == s.state)
        && labels_match(&s.labels, &f.label_selector)
}

/// Whether a container passes a `ListContainers` filter.
pub fn container(c: &cri::Container, f: Option<&cri::ContainerFilter>) -> bool {
    let Some(f) = f else { return true };
    id_matches(&c.id, &f.id)
        && id_matches(&c.pod_sandbox_id, &f.pod_sandbox_id)
        && f.state.as_ref().is_none_or(|st| st.state == c.state)
        && labels_match(&c.labels, &f.label_selector)
}

/// Whether sandbox stats pass a `ListPodSandboxStats` filter.
pub fn pod_sandbox_stats(s: &cri::PodSandboxStats, f: Option<&cri::PodSandboxStatsFilter>) -> bool {
    let Some(f) = f else { return true };
    let Some(a) = s.attributes.as_ref() else {
        return f.id.is_empty() && f.label_selector.is_empty();
    };
    id_matches(&a.id, &f.id) && labels_match(&a.labels, &f.label_selector)
}

/// Whether container stats pass a `ListContainerStats` filter.
///
/// The sandbox id is not part of the stats' attributes, so the caller passes it.
pub fn container_stats(
    s: &cri::ContainerStats,
    sandbox_id: &str,
    f: Option<&cri::ContainerStatsFilter>,
) -> bool {
    let Some(f) = f else { return true };
    let Some(a) = s.attributes.as_ref() else {
        return f.id.is_empty() && f.pod_sandbox_id.is_empty() && f.label_selector.is_empty();
    };
    id_matches(&a.id, &f.id)
        && id_matches(sandbox_id, &f.pod_sandbox_id)
        && labels_match(&a.labels, &f.label_selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, state: cri::PodSandboxState, labels: &[(&str, &str)]) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            state: state as i32,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sandbox_filter_fields_combine() {
        let s = sandbox(
            "abc123",
            cri::PodSandboxState::SandboxReady,
            &[("app", "x")],
        );
        assert!(pod_sandbox(&s, None));
        let mut f = cri::PodSandboxFilter::default();
        assert!(pod_sandbox(&s, Some(&f)));
        f.id = "abc".into();
        assert!(pod_sandbox(&s, Some(&f)), "ids match by prefix");
        f.state = Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxNotready as i32,
        });
        assert!(!pod_sandbox(&s, Some(&f)));
        f.state = Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        });
        f.label_selector.insert("app".into(), "y".into());
        assert!(!pod_sandbox(&s, Some(&f)));
        f.label_selector.insert("app".into(), "x".into());
        assert!(pod_sandbox(&s, Some(&f)));
        f.id = "zzz".into();
        assert!(!pod_sandbox(&s, Some(&f)));
    }

    #[test]
    fn container_filter_by_sandbox_and_state() {
        let c = cri::Container {
            id: "c1".into(),
            pod_sandbox_id: "s1".into(),
            state: cri::ContainerState::ContainerRunning as i32,
            ..Default::default()
        };
        let mut f = cri::ContainerFilter {
            pod_sandbox_id: "s1".into(),
            ..Default::default()
        };
        assert!(container(&c, Some(&f)));
        f.pod_sandbox_id = "s2".into();
        assert!(!container(&c, Some(&f)));
        f.pod_sandbox_id.clear();
        f.state = Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerExited as i32,
        });
        assert!(!container(&c, Some(&f)));
    }
}
