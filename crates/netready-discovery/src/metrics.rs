//! Discovery's metric families: targets known from the API, whether it is synced, watch
//! events, and since when the API has been unreachable.

use std::sync::Arc;

use netready_metrics::prometheus_client::encoding::EncodeLabelSet;
use netready_metrics::prometheus_client::metrics::counter::Counter;
use netready_metrics::prometheus_client::metrics::family::Family;
use netready_metrics::prometheus_client::metrics::gauge::Gauge;
use netready_metrics::prometheus_client::registry::Unit;
use netready_metrics::Metrics;

/// `{kind}` labels of discovered targets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetKindLabels {
    /// One of [`TARGET_KINDS`].
    pub kind: &'static str,
}

/// The kinds of targets discovery finds.
pub const TARGET_KINDS: [&str; 2] = ["other_node_pod", "service"];

/// `{resource,type}` labels of watch events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchEventLabels {
    /// `service` or `endpointslice`.
    pub resource: &'static str,
    /// The watcher's event: `init`, `init_apply`, `init_done`, `apply`, `delete`, `error`.
    pub r#type: &'static str,
}

/// Discovery's families.
#[derive(Debug)]
pub struct DiscoveryMetrics {
    /// Targets known from the API, by kind.
    pub targets: Family<TargetKindLabels, Gauge>,
    /// 1 once discovery's initial lists completed (its targets are the API's).
    pub synced: Gauge,
    /// Watch events received, by resource and type.
    pub events: Family<WatchEventLabels, Counter>,
    /// Unix time since which the API has been unreachable or refusing; 0 while it answers.
    pub unreachable_since: Gauge,
}

impl DiscoveryMetrics {
    /// Registers discovery's families in `m`; every target kind exists from the start.
    pub fn register(m: &Metrics) -> Arc<Self> {
        let d = DiscoveryMetrics {
            targets: Family::default(),
            synced: Gauge::default(),
            events: Family::default(),
            unreachable_since: Gauge::default(),
        };
        m.register(|r| {
            r.register(
                "discovery_targets",
                "Check targets known from the Kubernetes API, by kind (other_node_pod, service)",
                d.targets.clone(),
            );
            r.register(
                "discovery_synced",
                "1 once the control Service and its EndpointSlices were listed: targets are the API's",
                d.synced.clone(),
            );
            r.register(
                "discovery_events",
                "Watch events of the control Service and its EndpointSlices, by resource and type",
                d.events.clone(),
            );
            r.register_with_unit(
                "discovery_unreachable_since_timestamp",
                "Unix time since which the API server has been unreachable or refusing (0: answering); targets are the last known meanwhile",
                Unit::Seconds,
                d.unreachable_since.clone(),
            );
        });
        for kind in TARGET_KINDS {
            let _ = d.targets.get_or_create(&TargetKindLabels { kind });
        }
        Arc::new(d)
    }
}
