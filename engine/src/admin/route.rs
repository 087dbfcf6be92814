//! Request routing: which operation a method and path name, and which shard owns it. Pure.

use kapsel_http::Method;

use crate::error::EngineError;
use crate::model::ids::{owner_shard, valid_endpoint_id, EventId};

/// An operation of the external contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`.
    Health,
    /// `GET /readyz`.
    Ready,
    /// `POST /ingest/{endpoint_id}`.
    Ingest {
        /// Target endpoint.
        endpoint_id: String,
    },
    /// `POST /publish/{channel}`.
    Publish {
        /// The channel.
        channel: String,
        /// Whose channel: the key's tenant, or `default` for the operator token (set once the
        /// request is authenticated).
        tenant: String,
    },
    /// `PUT /admin/endpoints/{id}`.
    PutEndpoint {
        /// Endpoint id.
        id: String,
    },
    /// `POST /admin/endpoints` (the receiving shard generates the id before routing).
    CreateEndpoint {
        /// Generated endpoint id.
        id: String,
    },
    /// `GET /admin/endpoints/{id}`.
    GetEndpoint {
        /// Endpoint id.
        id: String,
    },
    /// `DELETE /admin/endpoints/{id}`.
    DeleteEndpoint {
        /// Endpoint id.
        id: String,
    },
    /// `GET /admin/events/{event_id}`.
    GetEvent {
        /// Event id.
        event_id: EventId,
    },
    /// `GET /admin/events/{event_id}/proof`.
    EventProof {
        /// Event id.
        event_id: EventId,
    },
    /// `GET /admin/audit/segments`.
    AuditSegments,
    /// `GET /admin/audit/changes?limit=`.
    AuditChanges {
        /// Most recent changes to show (1 to 1000, default 100).
        limit: usize,
    },
    /// `GET /metrics`.
    Metrics,
    /// `GET /admin/events?…`.
    ListEvents(crate::model::query::EventQuery),
    /// `POST /admin/events/{event_id}/retry[?endpoint_id=]`.
    RetryEvent {
        /// Event id.
        event_id: EventId,
        /// For a published event, the one delivery to redrive (all of them when absent).
        endpoint_id: Option<String>,
    },
    /// `POST /admin/endpoints/{id}/retry-failed`.
    RetryFailed {
        /// Endpoint id.
        id: String,
    },
    /// `PUT /admin/tenants/{tenant_id}`.
    PutTenant {
        /// Tenant id.
        id: String,
    },
    /// `GET /admin/tenants/{tenant_id}`.
    GetTenant {
        /// Tenant id.
        id: String,
    },
    /// `DELETE /admin/tenants/{tenant_id}`.
    DeleteTenant {
        /// Tenant id.
        id: String,
    },
    /// `POST /admin/tenants/{tenant_id}/keys`.
    CreateKey {
        /// Tenant id.
        tenant_id: String,
    },
    /// `GET /admin/tenants/{tenant_id}/keys`.
    ListKeys {
        /// Tenant id.
        tenant_id: String,
    },
    /// `DELETE /admin/keys/{key_id}`.
    RevokeKey {
        /// Key id.
        key_id: String,
    },
    /// `GET /openapi.json`: the OpenAPI document.
    OpenApi,
    /// `GET /ui/{asset}`: a dashboard file; `None` for `/ui`, which is sent on to `/ui/`.
    Ui {
        /// The file's name (empty for the index).
        asset: Option<String>,
    },
    /// `GET /admin/session`: who the bearer is and what it may do.
    Session,
    /// `GET /admin/cluster`: nodes, partitions, their owners and leases (cluster mode).
    Cluster,
    /// `GET /admin/endpoints?limit=&cursor=&tenant_id=`.
    ListEndpoints(EndpointQuery),
    /// `GET /admin/events/{event_id}/payload`.
    EventPayload {
        /// Event id.
        event_id: EventId,
    },
    /// `POST /admin/endpoints/{id}/enable` and `…/disable`.
    SetEnabled {
        /// Endpoint id.
        id: String,
        /// The new state.
        enabled: bool,
    },
}

/// The query of `GET /admin/endpoints`: a page of endpoints in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointQuery {
    /// Page size, 1 to 1000 (default 50).
    pub limit: usize,
    /// Only endpoints with ids after this one (the previous page's `next_cursor`).
    pub cursor: Option<String>,
    /// Only this tenant's endpoints (a key's own tenant whatever the query says).
    pub tenant_id: Option<String>,
    /// Whether the page shows the endpoints' secrets: not to a key without `write` (set once the
    /// request is authenticated, never from the query string).
    pub secrets: bool,
}

impl EndpointQuery {
    /// Parses `limit`, `cursor` and `tenant_id`; unknown parameters are refused.
    fn parse(query: Option<&str>) -> Result<Self, EngineError> {
        let mut parsed =
            Self { limit: crate::model::query::LIMIT_DEFAULT, cursor: None, tenant_id: None, secrets: true };
        for pair in crate::model::query::pairs(query) {
            match pair? {
                ("limit", value) => parsed.limit = limit(&value, crate::model::query::LIMIT_MAX)?,
                ("cursor", id) if valid_endpoint_id(&id) => parsed.cursor = Some(id),
                ("tenant_id", id) if crate::model::tenant::valid_tenant_id(&id) => parsed.tenant_id = Some(id),
                (name @ ("cursor" | "tenant_id"), _) => {
                    return Err(EngineError::Invalid(format!("{name} is not an endpoint or tenant id")));
                }
                (name, _) => return Err(EngineError::Invalid(format!("unknown query parameter {name}"))),
            }
        }
        Ok(parsed)
    }
}

impl Route {
    /// Parses a method and path. `generate_id` makes the id for `POST /admin/endpoints`.
    pub fn parse(
        method: Method,
        path: &str,
        query: Option<&str>,
        generate_id: impl FnOnce() -> String,
    ) -> Result<Self, EngineError> {
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        match segments.as_slice() {
            ["healthz"] => only_get(method, Self::Health),
            ["readyz"] => only_get(method, Self::Ready),
            ["metrics"] => only_get(method, Self::Metrics),
            ["openapi.json"] => only_get(method, Self::OpenApi),
            ["ui"] => only_get(method, Self::Ui { asset: None }),
            ["ui", asset] if crate::admin::assets::is_asset(asset) => {
                only_get(method, Self::Ui { asset: Some((*asset).to_string()) })
            }
            ["admin", "session"] => only_get(method, Self::Session),
            ["admin", "cluster"] => only_get(method, Self::Cluster),
            ["ingest", endpoint_id] => {
                let endpoint_id = known_endpoint(endpoint_id)?;
                only(method, Method::Post, "POST", Self::Ingest { endpoint_id })
            }
            ["publish", channel] => {
                if !crate::model::event_type::valid_channel(channel) {
                    return Err(EngineError::Invalid("channel names are 1 to 64 of a-z 0-9 _ -".into()));
                }
                let tenant = crate::model::tenant::DEFAULT_TENANT.to_string();
                only(method, Method::Post, "POST", Self::Publish { channel: (*channel).to_string(), tenant })
            }
            ["admin", "endpoints"] => match method {
                Method::Post => Ok(Self::CreateEndpoint { id: generate_id() }),
                Method::Get | Method::Head => Ok(Self::ListEndpoints(EndpointQuery::parse(query)?)),
                _ => Err(EngineError::MethodNotAllowed { allow: "GET, HEAD, POST" }),
            },
            ["admin", "endpoints", id] => Self::endpoint(method, id),
            ["admin", "endpoints", id, "retry-failed"] => {
                only(method, Method::Post, "POST", Self::RetryFailed { id: known_endpoint(id)? })
            }
            ["admin", "endpoints", id, action @ ("enable" | "disable")] => only(
                method,
                Method::Post,
                "POST",
                Self::SetEnabled { id: known_endpoint(id)?, enabled: *action == "enable" },
            ),
            ["admin", "events"] => only_get(method, Self::ListEvents(crate::model::query::EventQuery::parse(query)?)),
            ["admin", "events", event_id, "retry"] => {
                let event_id = known_event(event_id)?;
                only(method, Method::Post, "POST", Self::RetryEvent { event_id, endpoint_id: retry_endpoint(query)? })
            }
            ["admin", "events", event_id] => only_get(method, Self::GetEvent { event_id: known_event(event_id)? }),
            ["admin", "events", event_id, "payload"] => {
                only_get(method, Self::EventPayload { event_id: known_event(event_id)? })
            }
            ["admin", "events", event_id, "proof"] => {
                only_get(method, Self::EventProof { event_id: known_event(event_id)? })
            }
            ["admin", "audit", "segments"] => only_get(method, Self::AuditSegments),
            ["admin", "audit", "changes"] => only_get(method, Self::AuditChanges { limit: changes_limit(query)? }),
            ["admin", "tenants", id] => Self::tenant(method, id),
            ["admin", "tenants", id, "keys"] => {
                let tenant_id = known_tenant(id)?;
                match method {
                    Method::Post => Ok(Self::CreateKey { tenant_id }),
                    Method::Get | Method::Head => Ok(Self::ListKeys { tenant_id }),
                    _ => Err(EngineError::MethodNotAllowed { allow: "GET, HEAD, POST" }),
                }
            }
            ["admin", "keys", key_id] => {
                if !crate::model::tenant::valid_key_id(key_id) {
                    return Err(EngineError::NotFound(format!("key {key_id} not found")));
                }
                only(method, Method::Delete, "DELETE", Self::RevokeKey { key_id: (*key_id).to_string() })
            }
            _ => Err(EngineError::NotFound(format!("no route for {path}"))),
        }
    }

    fn endpoint(method: Method, id: &str) -> Result<Self, EngineError> {
        const ALLOW: &str = "GET, HEAD, PUT, DELETE";
        match method {
            Method::Put => {
                if !valid_endpoint_id(id) {
                    return Err(EngineError::Invalid("endpoint ids are 1 to 64 of A-Z a-z 0-9 _ - .".into()));
                }
                Ok(Self::PutEndpoint { id: id.to_string() })
            }
            Method::Get | Method::Head => Ok(Self::GetEndpoint { id: known_endpoint(id)? }),
            Method::Delete => Ok(Self::DeleteEndpoint { id: known_endpoint(id)? }),
            _ => Err(EngineError::MethodNotAllowed { allow: ALLOW }),
        }
    }

    fn tenant(method: Method, id: &str) -> Result<Self, EngineError> {
        match method {
            Method::Put => {
                if !crate::model::tenant::valid_tenant_id(id) {
                    return Err(EngineError::Invalid("tenant ids are 1 to 64 of A-Z a-z 0-9 _ -".into()));
                }
                Ok(Self::PutTenant { id: id.to_string() })
            }
            Method::Get | Method::Head => Ok(Self::GetTenant { id: known_tenant(id)? }),
            Method::Delete => Ok(Self::DeleteTenant { id: known_tenant(id)? }),
            _ => Err(EngineError::MethodNotAllowed { allow: "GET, HEAD, PUT, DELETE" }),
        }
    }

    /// True for tenant and key management, which runs on the shard that keeps them.
    pub fn is_access(&self) -> bool {
        matches!(
            self,
            Self::PutTenant { .. }
                | Self::GetTenant { .. }
                | Self::DeleteTenant { .. }
                | Self::CreateKey { .. }
                | Self::ListKeys { .. }
                | Self::RevokeKey { .. }
        )
    }

    /// True for `/admin/…` routes (bearer token required).
    pub fn is_admin(&self) -> bool {
        !matches!(
            self,
            Self::Health
                | Self::Ready
                | Self::Metrics
                | Self::OpenApi
                | Self::Ui { .. }
                | Self::Ingest { .. }
                | Self::Publish { .. }
        )
    }

    /// The shard that must run this route, or `None` when any shard can.
    pub fn owner(&self, shards: usize) -> Option<usize> {
        match self {
            Self::Health
            | Self::Ready
            | Self::Metrics
            | Self::OpenApi
            | Self::Ui { .. }
            | Self::Session
            | Self::Cluster
            | Self::ListEndpoints(_)
            | Self::AuditSegments
            | Self::AuditChanges { .. } => None,
            Self::PutTenant { .. }
            | Self::GetTenant { .. }
            | Self::DeleteTenant { .. }
            | Self::CreateKey { .. }
            | Self::ListKeys { .. }
            | Self::RevokeKey { .. } => Some(crate::admin::access::ACCESS_SHARD % shards.max(1)),
            Self::ListEvents(query) => query.endpoint_id.as_deref().map(|id| owner_shard(id, shards)),
            Self::RetryFailed { id } | Self::SetEnabled { id, .. } => Some(owner_shard(id, shards)),
            // A channel's publishes, keys and handoffs live on the shard its name hashes to.
            Self::Publish { channel, tenant } => {
                Some(owner_shard(&crate::state::tenant_channel(tenant, channel), shards))
            }
            // One delivery of a published event is redriven where its endpoint lives.
            Self::RetryEvent { endpoint_id: Some(id), .. } => Some(owner_shard(id, shards)),
            Self::Ingest { endpoint_id: id }
            | Self::PutEndpoint { id }
            | Self::CreateEndpoint { id }
            | Self::GetEndpoint { id }
            | Self::DeleteEndpoint { id } => Some(owner_shard(id, shards)),
            Self::GetEvent { event_id }
            | Self::EventProof { event_id }
            | Self::EventPayload { event_id }
            | Self::RetryEvent { event_id, .. } => Some(usize::from(event_id.shard()) % shards.max(1)),
        }
    }
}

fn only(method: Method, expected: Method, allow: &'static str, route: Route) -> Result<Route, EngineError> {
    if method == expected {
        Ok(route)
    } else {
        Err(EngineError::MethodNotAllowed { allow })
    }
}

/// A path that only reads: `GET`, and `HEAD`, which RFC 9110 §9.3.2 makes the same request
/// answered without content (the server leaves the body out and keeps its `Content-Length`).
fn only_get(method: Method, route: Route) -> Result<Route, EngineError> {
    match method {
        Method::Get | Method::Head => Ok(route),
        _ => Err(EngineError::MethodNotAllowed { allow: "GET, HEAD" }),
    }
}

/// The query of `POST /admin/events/{id}/retry`: nothing, or `endpoint_id=` naming one delivery.
fn retry_endpoint(query: Option<&str>) -> Result<Option<String>, EngineError> {
    let mut endpoint_id = None;
    for pair in crate::model::query::pairs(query) {
        match pair? {
            ("endpoint_id", id) if valid_endpoint_id(&id) => endpoint_id = Some(id),
            ("endpoint_id", _) => return Err(EngineError::Invalid("endpoint_id is not an endpoint id".into())),
            (name, _) => return Err(EngineError::Invalid(format!("unknown query parameter {name}"))),
        }
    }
    Ok(endpoint_id)
}

fn known_event(text: &str) -> Result<EventId, EngineError> {
    EventId::parse(text).ok_or_else(|| EngineError::NotFound(format!("event {text} not found")))
}

/// The query of `GET /admin/audit/changes`: nothing, or `limit=` 1 to 1000.
fn changes_limit(query: Option<&str>) -> Result<usize, EngineError> {
    let mut shown = 100;
    for pair in crate::model::query::pairs(query) {
        match pair? {
            ("limit", value) => shown = limit(&value, 1000)?,
            (name, _) => return Err(EngineError::Invalid(format!("unknown query parameter {name}"))),
        }
    }
    Ok(shown)
}

/// A page size: 1 to `most`, else 400 E1005.
fn limit(value: &str, most: usize) -> Result<usize, EngineError> {
    value
        .parse()
        .ok()
        .filter(|limit| (1..=most).contains(limit))
        .ok_or_else(|| EngineError::Invalid(format!("limit must be 1 to {most}")))
}

/// A tenant id in a path: one that cannot exist is simply not found.
fn known_tenant(id: &str) -> Result<String, EngineError> {
    if crate::model::tenant::valid_tenant_id(id) {
        Ok(id.to_string())
    } else {
        Err(EngineError::NotFound(format!("tenant {id} not found")))
    }
}

/// An id in a path that must name an existing endpoint: one that cannot exist is simply not found.
fn known_endpoint(id: &str) -> Result<String, EngineError> {
    if valid_endpoint_id(id) {
        Ok(id.to_string())
    } else {
        Err(EngineError::NotFound(format!("endpoint {id} not found")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Result<Route, EngineError> {
        Route::parse(method, path, None, || "ep_generated".into())
    }

    // The contract's paths map to their operations; wrong methods and unknown paths are refused.
    #[test]
    fn contract_paths_route() {
        assert_eq!(parse(Method::Post, "/ingest/orders").unwrap(), Route::Ingest { endpoint_id: "orders".into() });
        assert_eq!(parse(Method::Put, "/admin/endpoints/a").unwrap(), Route::PutEndpoint { id: "a".into() });
        assert_eq!(
            parse(Method::Post, "/admin/endpoints").unwrap(),
            Route::CreateEndpoint { id: "ep_generated".into() }
        );
        assert_eq!(parse(Method::Delete, "/admin/endpoints/a").unwrap(), Route::DeleteEndpoint { id: "a".into() });
        assert_eq!(parse(Method::Get, "/healthz").unwrap(), Route::Health);
        assert!(matches!(parse(Method::Get, "/ingest/orders"), Err(EngineError::MethodNotAllowed { .. })));
        assert!(matches!(parse(Method::Get, "/nope"), Err(EngineError::NotFound(_))));
        assert!(matches!(parse(Method::Post, "/ingest/a/b"), Err(EngineError::NotFound(_))));
        assert!(matches!(parse(Method::Put, "/admin/endpoints/bad%20id"), Err(EngineError::Invalid(_))));
        let publish = Route::Publish { channel: "orders".into(), tenant: "default".into() };
        assert_eq!(parse(Method::Post, "/publish/orders").unwrap(), publish);
        assert_eq!(publish.owner(4), Some(crate::model::ids::owner_shard("default/orders", 4)));
        assert!(!parse(Method::Post, "/publish/orders").unwrap().is_admin());
        assert!(matches!(parse(Method::Post, "/publish/Orders"), Err(EngineError::Invalid(_))));
        assert!(matches!(parse(Method::Get, "/publish/orders"), Err(EngineError::MethodNotAllowed { .. })));
        assert!(matches!(parse(Method::Get, "/admin/events/evt_nope"), Err(EngineError::NotFound(_))));
        let event = EventId::new(5, 1, 2);
        let route = parse(Method::Get, &format!("/admin/events/{event}")).unwrap();
        assert_eq!(route.owner(4), Some(1));
        assert!(route.is_admin());
    }

    // RFC 9110 §9.3.2: every path that answers GET answers HEAD the same way (the server drops
    // the body), and a 405 names both in `Allow`; HEAD is no way around a path's method.
    #[test]
    fn every_get_path_answers_head() {
        let event = EventId::new(5, 1, 2);
        let paths = [
            "/healthz".to_string(),
            "/readyz".to_string(),
            "/metrics".to_string(),
            "/admin/endpoints/a".to_string(),
            "/admin/events".to_string(),
            format!("/admin/events/{event}"),
            format!("/admin/events/{event}/proof"),
            format!("/admin/events/{event}/payload"),
            "/admin/audit/segments".to_string(),
            "/admin/endpoints".to_string(),
            "/admin/session".to_string(),
            "/openapi.json".to_string(),
            "/ui".to_string(),
            "/ui/".to_string(),
            "/ui/app.js".to_string(),
        ];
        for path in paths {
            let get = parse(Method::Get, &path).unwrap();
            assert_eq!(parse(Method::Head, &path).unwrap(), get, "{path}");
            match parse(Method::Patch, &path) {
                Err(EngineError::MethodNotAllowed { allow }) => assert!(allow.starts_with("GET, HEAD"), "{path}"),
                other => panic!("{path}: PATCH should be 405, got {other:?}"),
            }
        }
        assert!(matches!(parse(Method::Head, "/ingest/orders"), Err(EngineError::MethodNotAllowed { allow: "POST" })));
    }

    // The dashboard's and the document's paths are open and answered by any shard; a file the
    // dashboard does not have is simply not found, and no path climbs out of `ui/`.
    #[test]
    fn static_paths_are_open_and_bounded() {
        assert_eq!(parse(Method::Get, "/ui/").unwrap(), Route::Ui { asset: Some(String::new()) });
        assert_eq!(parse(Method::Get, "/ui").unwrap(), Route::Ui { asset: None });
        for route in [parse(Method::Get, "/ui/app.js").unwrap(), parse(Method::Get, "/openapi.json").unwrap()] {
            assert!(!route.is_admin());
            assert_eq!(route.owner(4), None);
        }
        for path in ["/ui/missing.js", "/ui/../Cargo.toml", "/ui/a/b", "/ui/%2e%2e"] {
            assert!(matches!(parse(Method::Get, path), Err(EngineError::NotFound(_))), "{path}");
        }
    }

    // The endpoint listing's query: a page size within bounds, an endpoint id as the cursor, a
    // tenant id; anything else is 400.
    #[test]
    fn endpoint_listing_query() {
        let route = |query: &str| Route::parse(Method::Get, "/admin/endpoints", Some(query), || "x".into());
        assert_eq!(
            route("limit=2&cursor=ep_a&tenant_id=acme").unwrap(),
            Route::ListEndpoints(EndpointQuery {
                limit: 2,
                cursor: Some("ep_a".into()),
                tenant_id: Some("acme".into()),
                secrets: true
            })
        );
        assert_eq!(
            route("").unwrap(),
            Route::ListEndpoints(EndpointQuery { limit: 50, cursor: None, tenant_id: None, secrets: true })
        );
        assert_eq!(
            route("tenant_id=ac%6De&cursor=ep%5Fa").unwrap(),
            Route::ListEndpoints(EndpointQuery {
                limit: 50,
                cursor: Some("ep_a".into()),
                tenant_id: Some("acme".into()),
                secrets: true
            })
        );
        for bad in ["limit=0", "limit=1001", "limit=x", "cursor=a%20b", "tenant_id=a/b", "sort=id", "cursor=%ff"] {
            assert!(matches!(route(bad), Err(EngineError::Invalid(_))), "{bad}");
        }
    }
}
