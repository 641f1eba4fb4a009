//! Between Kubernetes objects and the union's types: a Service's cross-cluster labels
//! and its ready endpoints read from the cluster's own EndpointSlices; Portico's slices
//! read back from a cluster; and the EndpointSlice Portico applies for a [`Slice`].
//!
//! Reading follows the EndpointSlice API's rules: an endpoint whose `ready` condition
//! is absent counts as ready ("in most cases consumers should interpret this unknown
//! state as ready"), only an endpoint's first address is used (as kube-proxy does),
//! `FQDN` slices carry no addresses to unite, and a slice without port numbers
//! (unrestricted ports) is not carried over. What Portico reads back is normalised
//! (sorted) the way [`crate::union`] builds it, so an unchanged slice compares equal and
//! causes no write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{
    Endpoint as K8sEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::union::{AddressType, Endpoint, Port, ServiceView, Slice, MANAGED_BY};

/// `"true"` on a peak cluster's Service, `"false"` on a production one (seed 004).
pub const LABEL_REMOTE: &str = "ex-remote";
/// Narrows the pairing to one cluster (see [`crate::union`]).
pub const LABEL_PEER: &str = "peer-cluster";
/// The Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Who manages an EndpointSlice; Portico's are [`MANAGED_BY`].
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// The cluster a slice's endpoints come from (the Multi-Cluster Services API's label).
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";

fn label<'m>(meta: &'m ObjectMeta, name: &str) -> Option<&'m str> {
    meta.labels.as_ref()?.get(name).map(String::as_str)
}

/// Whether Portico manages `slice`.
pub fn is_managed(slice: &EndpointSlice) -> bool {
    label(&slice.metadata, LABEL_MANAGED_BY) == Some(MANAGED_BY)
}

/// The Service a slice belongs to, from its label.
pub fn service_of(slice: &EndpointSlice) -> Option<&str> {
    label(&slice.metadata, LABEL_SERVICE_NAME)
}

/// A labelled Service's view from `slices` (the cluster's slices of that Service;
/// Portico's own are skipped): `Ok(None)` when it carries no `ex-remote` label, an
/// error naming the label when its value is neither `"true"` nor `"false"`.
pub fn service_view<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Result<Option<ServiceView>, String> {
    let remote = match label(&service.metadata, LABEL_REMOTE) {
        None => return Ok(None),
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(format!(
                "label {LABEL_REMOTE}: {other:?} is neither \"true\" nor \"false\""
            ))
        }
    };
    let peer = label(&service.metadata, LABEL_PEER).map(str::to_owned);
    let mut ready: BTreeMap<Vec<Port>, BTreeSet<IpAddr>> = BTreeMap::new();
    for slice in slices {
        if is_managed(slice) || !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(ports) = ports_of(slice) else {
            continue;
        };
        let addresses = ready_addresses(slice);
        if !addresses.is_empty() {
            ready.entry(ports).or_default().extend(addresses);
        }
    }
    Ok(Some(ServiceView {
        remote,
        peer,
        ready,
    }))
}

/// The ready endpoints' addresses of a slice (each endpoint's first; an endpoint
/// without a `ready` condition counts as ready).
pub fn ready_addresses(slice: &EndpointSlice) -> Vec<IpAddr> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.addresses.first()?.parse().ok())
        .collect()
}

/// The cluster a slice's endpoints come from (Portico's slices name it).
pub fn source_of(slice: &EndpointSlice) -> Option<&str> {
    label(&slice.metadata, LABEL_SOURCE_CLUSTER)
}

/// A slice's ports, sorted; `None` when one has no number (unrestricted ports).
pub fn ports_of(slice: &EndpointSlice) -> Option<Vec<Port>> {
    let mut ports = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            Some(Port {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: p.port?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect::<Option<Vec<Port>>>()?;
    ports.sort();
    Some(ports)
}

/// One of Portico's slices as a cluster holds it; `None` for a slice Portico does not
/// manage or one it cannot have written (labels or addresses missing).
pub fn managed_slice(slice: &EndpointSlice) -> Option<Slice> {
    if !is_managed(slice) {
        return None;
    }
    let address_type = match slice.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        _ => return None,
    };
    let mut endpoints = slice
        .endpoints
        .iter()
        .map(|e| {
            Some(Endpoint {
                address: e.addresses.first()?.parse().ok()?,
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
        })
        .collect::<Option<Vec<Endpoint>>>()?;
    endpoints.sort();
    Some(Slice {
        namespace: slice.metadata.namespace.clone()?,
        name: slice.metadata.name.clone()?,
        service: service_of(slice)?.to_owned(),
        source: source_of(slice)?.to_owned(),
        address_type,
        ports: ports_of(slice)?,
        endpoints,
    })
}

/// The EndpointSlice Portico applies for `slice`, owned by its Service (`owner`) so
/// Kubernetes removes it with the Service.
pub fn endpoint_slice(slice: &Slice, owner: Option<OwnerReference>) -> EndpointSlice {
    let labels = BTreeMap::from([
        (LABEL_SERVICE_NAME.to_owned(), slice.service.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_SOURCE_CLUSTER.to_owned(), slice.source.clone()),
    ]);
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice.name.clone()),
            namespace: Some(slice.namespace.clone()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        address_type: slice.address_type.as_str().to_owned(),
        endpoints: slice
            .endpoints
            .iter()
            .map(|e| K8sEndpoint {
                addresses: vec![e.address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.ready),
                    terminating: Some(false),
                }),
                ..K8sEndpoint::default()
            })
            .collect(),
        ports: Some(
            slice
                .ports
                .iter()
                .map(|p| EndpointPort {
                    name: p.name.clone(),
                    port: Some(p.port),
                    protocol: Some(p.protocol.clone()),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
        ),
    }
}

/// The owner reference that ties a slice to `service`; `None` when the Service has no
/// name or uid yet.
pub fn owner_of(service: &Service) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: service.metadata.name.clone()?,
        uid: service.metadata.uid.clone()?,
        controller: Some(false),
        block_owner_deletion: Some(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn labelled(labels: serde_json::Value) -> Service {
        from_json(
            json!({"metadata": {"name": "orders", "namespace": "shop", "uid": "u-1", "labels": labels}}),
        )
    }

    /// A slice of the built-in controller, as the API server serves it.
    fn builtin(endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
        from_json(json!({
            "metadata": {"name": "orders-abcde", "namespace": "shop", "labels": {
                "kubernetes.io/service-name": "orders",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }))
    }

    #[test]
    fn labels_decide_the_side_and_bad_values_are_refused() {
        let none: [&EndpointSlice; 0] = [];
        assert_eq!(
            service_view(&labelled(json!({"app": "x"})), none).unwrap(),
            None
        );
        let peak = service_view(
            &labelled(json!({"ex-remote": "true", "peer-cluster": "prod"})),
            none,
        )
        .unwrap()
        .unwrap();
        assert!(peak.remote);
        assert_eq!(peak.peer.as_deref(), Some("prod"));
        let production = service_view(&labelled(json!({"ex-remote": "false"})), none)
            .unwrap()
            .unwrap();
        assert!(!production.remote && production.peer.is_none());
        let err = service_view(&labelled(json!({"ex-remote": "yes"})), none).unwrap_err();
        assert!(err.contains("ex-remote") && err.contains("yes"), "{err}");
    }

    #[test]
    fn only_ready_first_addresses_of_the_clusters_own_slices_count() {
        let service = labelled(json!({"ex-remote": "true"}));
        let ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
        let own = builtin(
            json!([
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.2", "10.1.0.99"]},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["not-an-ip"]},
            ]),
            ports.clone(),
        );
        // Portico's own slice of the same Service is never read as the cluster's.
        let mut ours = builtin(json!([{"addresses": ["10.9.9.9"]}]), ports.clone());
        ours.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
        let unrestricted = builtin(
            json!([{"addresses": ["10.1.0.7"]}]),
            json!([{"name": "any"}]),
        );
        let mut fqdn = builtin(json!([{"addresses": ["db.example.com"]}]), ports);
        fqdn.address_type = "FQDN".to_owned();
        let view = service_view(&service, [&own, &ours, &unrestricted, &fqdn])
            .unwrap()
            .unwrap();
        assert_eq!(view.ready.len(), 1, "{view:?}");
        let (ports, addresses) = view.ready.iter().next().unwrap();
        assert_eq!(
            ports,
            &[Port {
                name: Some("http".into()),
                port: 8080,
                protocol: "TCP".into(),
                app_protocol: None
            }]
        );
        let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        assert_eq!(addresses, ["10.1.0.1", "10.1.0.2"]);
    }

    #[test]
    fn what_portico_applies_reads_back_equal_and_carries_its_labels() {
        let slice = Slice {
            namespace: "shop".into(),
            name: "orders-peak-58a9e0be-0".into(),
            service: "orders".into(),
            source: "peak".into(),
            address_type: AddressType::IPv4,
            ports: vec![
                Port {
                    name: Some("grpc".into()),
                    port: 9090,
                    protocol: "TCP".into(),
                    app_protocol: Some("grpc".into()),
                },
                Port {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: "TCP".into(),
                    app_protocol: None,
                },
            ],
            endpoints: vec![
                Endpoint {
                    address: "10.9.0.1".parse().unwrap(),
                    ready: true,
                },
                Endpoint {
                    address: "10.9.0.2".parse().unwrap(),
                    ready: false,
                },
            ],
        };
        let owner = owner_of(&labelled(json!({"ex-remote": "false"})));
        let object = endpoint_slice(&slice, owner);
        // Through JSON, as the API server would store and serve it.
        let served: EndpointSlice = from_json(serde_json::to_value(&object).unwrap());
        assert_eq!(managed_slice(&served), Some(slice.clone()));
        let labels = served.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "orders");
        assert_eq!(labels[LABEL_MANAGED_BY], "portico-xcluster");
        assert_eq!(labels[LABEL_SOURCE_CLUSTER], "peak");
        let owner = &served.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "u-1")
        );
        let json = serde_json::to_value(&object).unwrap();
        assert_eq!(json["addressType"], "IPv4");
        assert_eq!(json["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(json["endpoints"][1]["conditions"]["serving"], false);

        // Endpoints in another order read back the same: no write for a reordering.
        let mut shuffled = object.clone();
        shuffled.endpoints.reverse();
        shuffled.ports.as_mut().unwrap().reverse();
        assert_eq!(managed_slice(&shuffled), Some(slice));

        // Not Portico's, or missing what Portico always writes: not a managed slice.
        let mut foreign = object.clone();
        foreign
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_MANAGED_BY.to_owned(), "someone-else".to_owned());
        assert_eq!(managed_slice(&foreign), None);
        let mut unlabelled = object;
        unlabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(LABEL_SOURCE_CLUSTER);
        assert_eq!(managed_slice(&unlabelled), None);
    }
}
