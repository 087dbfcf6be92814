//! The HTTP face of a shard: implements `kapsel_http::Handler`. Authenticates, routes, and runs
//! the operation on the owning shard — here, or on another shard after a hop through its inbox.

use std::rc::Rc;
use std::sync::Arc;

use kapsel_http::{HeaderName, Request, RequestHead, Response};
use serde_json::json;
use tracing::Instrument as _;

use crate::admin::access::Principal;
use crate::admin::inbox::{ask_others, Command};
use crate::admin::route::Route;
use crate::admin::shared::Shared;
use crate::error::EngineError;
use crate::limits;
use crate::model::event_type;
use crate::model::ids::EventId;
use crate::shard::{Accepted, Ingest, IngestBearer, Shard};
use crate::state::idempotency;
use crate::state::ShardState;

/// One shard's request handler.
pub struct Service {
    shard: Rc<Shard>,
    shared: Arc<Shared>,
    /// Cluster mode: the partitions this thread owns, and the way to the others' owners.
    partitions: Option<Rc<crate::admin::cluster::Partitions>>,
}

impl Service {
    /// The handler for `shard`.
    pub fn new(shard: Rc<Shard>, shared: Arc<Shared>) -> Self {
        Self { shard, shared, partitions: None }
    }

    /// Cluster mode: endpoints and events live in partitions (ADR 17), run here when this
    /// thread owns them and at their owner otherwise.
    pub fn with_partitions(mut self, partitions: Rc<crate::admin::cluster::Partitions>) -> Self {
        self.partitions = Some(partitions);
        self
    }

    fn route(&self, head: &RequestHead) -> Result<Route, EngineError> {
        route_request(&self.shared, head)
    }
}

/// Authenticates and routes a request head: what [`Service`] does before it runs anything, and
/// what a partition's owner does with a request another node forwarded.
pub fn route_request(shared: &Shared, head: &RequestHead) -> Result<Route, EngineError> {
    let authorize = |head: &RequestHead| {
        crate::admin::access::authenticate(shared, head).ok_or_else(|| {
            EngineError::Unauthorized("missing or wrong bearer token (the operator token or a key)".into())
        })
    };
    // Everything under /admin/ needs a token first: without one the answer is 401 whatever
    // the path, so an unauthenticated caller learns nothing about which paths or ids exist.
    let admin_path = head.path == "/admin" || head.path.starts_with("/admin/");
    let principal = if admin_path { Some(authorize(head)?) } else { None };
    let mut route = Route::parse(head.method, &head.path, head.query.as_deref(), generate_endpoint_id)?;
    if route.is_admin() {
        let principal = match principal {
            Some(principal) => principal,
            None => authorize(head)?,
        };
        crate::admin::access::permit(&principal, &route)?;
        if let Principal::Key(key) = &principal {
            // A key lists its tenant's events and endpoints only.
            match &mut route {
                Route::ListEvents(query) => query.tenant_id = Some(key.tenant_id.clone()),
                Route::ListEndpoints(query) => {
                    query.tenant_id = Some(key.tenant_id.clone());
                    query.secrets = key.scopes.has(crate::model::tenant::Scope::Write);
                }
                _ => {}
            }
        }
    }
    if let Route::Publish { tenant, .. } = &mut route {
        // A publish needs a key with `ingest` (its tenant's channels) or the operator token
        // (`default`'s): an open publish path would let anyone who reaches the port make
        // Kapsel sign a forgery for every subscriber.
        *tenant = match authorize(head)? {
            Principal::Operator => crate::model::tenant::DEFAULT_TENANT.to_string(),
            Principal::Key(key) if key.scopes.has(crate::model::tenant::Scope::Ingest) => key.tenant_id.clone(),
            Principal::Key(_) => return Err(EngineError::Unauthorized("this key has no `ingest` scope".into())),
        };
    }
    if !matches!(route, Route::Health | Route::Ready | Route::OpenApi | Route::Ui { .. }) {
        shared.check_serving()?;
    }
    Ok(route)
}

impl Service {
    async fn dispatch(&self, route: Route, request: Request) -> Response {
        // With an index every listing comes from it, a key's filtered to its tenant (in
        // cluster mode too: the partitions' owners feed it).
        if let (Some(index), Route::ListEvents(query)) = (&self.shared.index, &route) {
            return match index.query(crate::index::query::Query::List(query.clone())).await {
                Ok(json) => Response::json(200, json.to_string().into_bytes()),
                Err(error) => error.into_response(),
            };
        }
        if let Some(partitions) = &self.partitions {
            // Cluster mode: endpoints and events live in partitions.
            match &route {
                Route::Cluster => {
                    let json = partitions.node().to_json(crate::clock::now_ms());
                    return Response::json(200, json.to_string().into_bytes());
                }
                Route::ListEndpoints(_) => return partitions.list_everywhere(route, request).await,
                Route::AuditSegments => {
                    let node = partitions.node();
                    let local = crate::admin::audit::segments_json(&self.shared.data_directory, self.shared.shards);
                    let sealed = crate::cluster::seal::partitions_json(&node.link, node.config.partitions).await;
                    return match (local, sealed) {
                        (Ok(mut json), Ok(sealed)) => {
                            json["partitions"] = sealed;
                            Response::json(200, json.to_string().into_bytes())
                        }
                        (Err(error), _) => error.into_response(),
                        (_, Err(reason)) => EngineError::Unavailable(reason).into_response(),
                    };
                }
                Route::ListEvents(query) if query.endpoint_id.is_none() => {
                    return partitions.list_everywhere(route, request).await
                }
                _ => {}
            }
            if let Some(partition) = route.owner(partitions.node().config.partitions as usize) {
                return partitions.run_request(partition as u32, route, request).await;
            }
        }
        match (route.owner(self.shared.shards), route) {
            (None, Route::Cluster) => EngineError::NotFound(
                "this node runs alone (single-node mode): GET /admin/cluster answers in cluster mode, with KAPSEL_NATS_URL set"
                    .into(),
            )
            .into_response(),
            (None, Route::ListEvents(query)) => self.list_everywhere(query).await,
            (None, Route::Metrics) => {
                // The one series that names endpoints shows them to the operator token in full,
                // to a key for its tenant, and to an anonymous scrape not at all.
                let names = match crate::admin::access::authenticate(&self.shared, &request.head) {
                    Some(Principal::Operator) => crate::admin::metrics::EndpointNames::All,
                    Some(Principal::Key(key)) => crate::admin::metrics::EndpointNames::Tenant(key.tenant_id.clone()),
                    None => crate::admin::metrics::EndpointNames::None,
                };
                self.metrics_everywhere(&names).await
            }
            (None, Route::Session) => match crate::admin::access::authenticate(&self.shared, &request.head) {
                Some(principal) => {
                    Response::json(200, crate::admin::access::session_json(&principal).to_string().into_bytes())
                }
                None => EngineError::Unauthorized("missing or wrong bearer token".into()).into_response(),
            },
            (None, Route::ListEndpoints(query)) => self.endpoints_everywhere(query).await,
            (None, Route::AuditChanges { limit }) => {
                crate::admin::access::changes_everywhere(&self.shard, &self.shared, limit).await
            }
            (None, route) => answer_anywhere(&route, &self.shared),
            (Some(owner), route) if owner == self.shard.index => {
                execute(&self.shard, &self.shared, route, request).await
            }
            (Some(owner), route) => self.forward(owner, route, request).await,
        }
    }

    /// Asks every shard for its newest matching events and merges them into one page.
    async fn list_everywhere(&self, query: crate::model::query::EventQuery) -> Response {
        let local = crate::admin::events::list_local(&self.shard, &query);
        let asked = query.clone();
        match self.gather(local, |reply| Command::ListEvents { query: asked.clone(), reply }).await {
            Ok(matches) => {
                Response::json(200, crate::admin::events::page(matches, query.limit).to_string().into_bytes())
            }
            Err(error) => error.into_response(),
        }
    }

    /// Asks every shard for its first endpoints after the cursor and merges them into one page.
    async fn endpoints_everywhere(&self, query: crate::admin::route::EndpointQuery) -> Response {
        let local = crate::admin::events::endpoints_local(&self.shard, &query);
        let asked = query.clone();
        match self.gather(local, |reply| Command::ListEndpoints { query: asked.clone(), reply }).await {
            Ok(matches) => {
                Response::json(200, crate::admin::events::endpoints_page(matches, query.limit).to_string().into_bytes())
            }
            Err(error) => error.into_response(),
        }
    }

    /// This shard's matches followed by every other shard's, asked with the command `make` builds.
    async fn gather<T>(
        &self,
        mut matches: Vec<T>,
        make: impl Fn(futures_channel::oneshot::Sender<Vec<T>>) -> Command,
    ) -> Result<Vec<T>, EngineError> {
        matches.extend(ask_others(self.shard.index, &self.shared, make).await?.into_iter().flatten());
        Ok(matches)
    }

    /// Gathers every shard's metrics and renders them.
    async fn metrics_everywhere(&self, names: &crate::admin::metrics::EndpointNames) -> Response {
        let now = crate::clock::now_ms();
        let mut reports = vec![crate::admin::metrics::report(&self.shard, now)];
        match ask_others(self.shard.index, &self.shared, |reply| Command::Metrics { reply }).await {
            Ok(found) => reports.extend(found),
            Err(error) => return error.into_response(),
        }
        let cluster = self.partitions.as_ref().map(|partitions| partitions.node());
        if let Some(node) = cluster {
            reports.extend(node.partition_reports());
        }
        let index = self.shared.index.as_ref().map(|index| index.status().as_ref());
        let mut response = Response::empty(200);
        response.content_type = Some("text/plain; version=0.0.4; charset=utf-8");
        for report in &mut reports {
            report.keep_endpoint_names(names);
        }
        let mut text = crate::admin::metrics::render(reports, index, now);
        if let Some(node) = cluster {
            text.push_str(&node.metrics_text(now));
        }
        response.body = text.into_bytes();
        response
    }

    /// Hands the request to its owner shard and waits for the answer.
    async fn forward(&self, owner: usize, route: Route, request: Request) -> Response {
        let Some(inbox) = self.shared.inboxes.get(owner) else {
            return EngineError::Unavailable("no such shard".into()).into_response();
        };
        let (reply, answer) = futures_channel::oneshot::channel();
        if inbox.send(Command::Request { route, request, reply }).is_err() {
            return EngineError::QueueFull("the owning shard's inbox is full".into()).into_response();
        }
        answer.await.unwrap_or_else(|_| EngineError::Unavailable("the owning shard stopped".into()).into_response())
    }
}

impl kapsel_http::Handler for Service {
    fn check_head(&self, head: &RequestHead) -> Option<Response> {
        let refused = match self.route(head) {
            Err(error) => Some(error.into_response()),
            Ok(route) if route.is_admin() && body_announced(head) > limits::ADMIN_BODY_BYTES_MAX as u64 => {
                Some(EngineError::TooLarge("admin bodies are at most 64 KiB".into()).into_response())
            }
            Ok(_) => None,
        };
        if let Some(response) = &refused {
            if head.path.starts_with("/ingest/") {
                self.shard.metrics().ingest(response.status, response.code, 0);
            }
        }
        refused.map(|response| never_stored(&head.path, response))
    }

    async fn handle(&self, request: Request) -> Response {
        let started = std::time::Instant::now();
        let is_ingest = request.head.path.starts_with("/ingest/");
        let never_cache = never_cached(&request.head.path);
        let response = match self.route(&request.head) {
            Ok(route) => self.dispatch(route, request).await,
            Err(error) => error.into_response(),
        };
        let response = if never_cache { no_store(response) } else { response };
        if is_ingest {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.shard.metrics().ingest(response.status, response.code, micros);
        }
        response
    }

    fn on_connection(&self, open: bool) {
        self.shard.metrics().connection(open);
    }

    fn on_refused(&self, status: u16, code: &'static str) {
        self.shard.metrics().refused(status, code);
    }
}

/// Whether `path`'s answers must never be kept by a cache: liveness, readiness and metrics
/// report the state of this moment, and admin answers carry live state and signing secrets.
fn never_cached(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/admin/")
}

/// `response` marked `Cache-Control: no-store` when `path`'s answers must never be cached.
fn never_stored(path: &str, response: Response) -> Response {
    if never_cached(path) {
        no_store(response)
    } else {
        response
    }
}

/// `response` with `Cache-Control: no-store` (RFC 9111 §5.2.2.5): a cache between a probe or a
/// scraper and Kapsel that kept a health answer or a scrape would report a stopped or
/// recovering shard as fine, and a counter as still.
fn no_store(response: Response) -> Response {
    response.with_header("Cache-Control", "no-store".to_string())
}

fn body_announced(head: &RequestHead) -> u64 {
    match head.framing {
        kapsel_http::BodyFraming::Length(length) => length,
        _ => 0,
    }
}

fn answer_anywhere(route: &Route, shared: &Shared) -> Response {
    match route {
        Route::AuditSegments => match crate::admin::audit::segments_json(&shared.data_directory, shared.shards) {
            Ok(json) => Response::json(200, json.to_string().into_bytes()),
            Err(error) => error.into_response(),
        },
        Route::OpenApi => crate::admin::assets::openapi(),
        // Relative links in the dashboard's index resolve under `/ui/` only.
        Route::Ui { asset: None } => Response::empty(308).with_header("Location", "/ui/".to_string()),
        Route::Ui { asset: Some(asset) } => crate::admin::assets::ui(asset)
            .unwrap_or_else(|| EngineError::NotFound(format!("no dashboard file {asset}")).into_response()),
        Route::Ready => match shared.check_serving().and_then(|()| shared.check_storage()) {
            Ok(()) => {
                let mut body = json!({"status": "ready"});
                if let Some(index) = &shared.index {
                    // The index is derived: its lag is reported, it never makes Kapsel unready.
                    body["index"] = index.status().to_json(crate::clock::now_ms());
                }
                Response::json(200, body.to_string().into_bytes())
            }
            Err(error) => error.into_response(),
        },
        _ => Response::json(200, json!({"status": "ok"}).to_string().into_bytes()),
    }
}

/// Whether what `route` names is `tenant`'s, as this shard (its owner) sees it; a missing
/// endpoint or event is nobody's and goes on to its own 404. A key finds another tenant's
/// endpoints, events and deliveries exactly as it finds missing ones: 404 E1004.
fn owned_by(shard: &Shard, route: &Route, tenant: &str) -> bool {
    let state = shard.state().borrow();
    let endpoint_tenant = |id: &str| state.endpoints.get(id).map(|entry| entry.endpoint.tenant_id() == tenant);
    match route {
        Route::GetEndpoint { id }
        | Route::PutEndpoint { id }
        | Route::DeleteEndpoint { id }
        | Route::RetryFailed { id }
        | Route::SetEnabled { id, .. } => endpoint_tenant(id).unwrap_or(true),
        // An event memory does not know is looked up in the index, filtered to the key's tenant.
        Route::GetEvent { event_id } if !known_here(&state, *event_id) => true,
        Route::GetEvent { event_id }
        | Route::EventProof { event_id }
        | Route::EventPayload { event_id }
        | Route::RetryEvent { event_id, .. } => {
            if let Some(event) = state.events.get(event_id) {
                return endpoint_tenant(state.endpoint_of(event)).unwrap_or(false);
            }
            if let Some(publication) = state.publications.get(event_id) {
                return state.names.get(publication.tenant) == Some(tenant);
            }
            // A published event this shard has deliveries of: theirs are its tenant's endpoints.
            // Anything else a key asks to prove or retry is not shown: memory cannot say whose
            // it is.
            state
                .deliveries_of(*event_id)
                .first()
                .and_then(|delivery| state.events.get(delivery))
                .is_some_and(|delivery| endpoint_tenant(state.endpoint_of(delivery)).unwrap_or(false))
        }
        _ => true,
    }
}

/// Whether this shard's memory holds `event_id`: an event or delivery, a publication, or
/// deliveries of one.
fn known_here(state: &ShardState, event_id: EventId) -> bool {
    state.events.get(&event_id).is_some()
        || state.publications.get(&event_id).is_some()
        || !state.deliveries_of(event_id).is_empty()
}

/// `PUT` or `POST` of an endpoint: its tenant is the body's `tenant_id`, else the key's, else the
/// endpoint's, else `default`; it must exist and have room (`endpoints_max`).
async fn put_endpoint(
    shard: &Shard,
    shared: &Shared,
    id: &str,
    request: &Request,
    principal: Option<&Principal>,
    now: u64,
) -> Result<Response, EngineError> {
    let mut input =
        crate::model::endpoint::EndpointInput::parse(&request.body).map_err(|error| EngineError::Invalid(error.0))?;
    if let Some(Principal::Key(key)) = principal {
        if input.tenant_id().is_some_and(|named| named != key.tenant_id) {
            return Err(EngineError::Invalid("a key creates and changes its own tenant's endpoints only".into()));
        }
        input = input.or_tenant(&key.tenant_id);
    }
    let existing = shard.state().borrow().endpoints.get(id).map(|entry| entry.endpoint.tenant_id().to_string());
    let tenant = input
        .tenant_id()
        .map(str::to_string)
        .or_else(|| existing.clone())
        .unwrap_or_else(|| crate::model::tenant::DEFAULT_TENANT.to_string());
    let endpoints_max = shared
        .access(|table| table.tenant(&tenant).map(|known| known.endpoints_max))
        .ok_or_else(|| EngineError::Invalid(format!("tenant {tenant} does not exist")))?;
    if existing.is_none() && endpoints_max.is_some_and(|max| shared.endpoints_of(&tenant) >= max as usize) {
        return Err(EngineError::QueueFull(format!("tenant {tenant} has as many endpoints as its endpoints_max")));
    }
    let by = principal.and_then(Principal::changed_by);
    let outcome = shard.put_endpoint_input(id, input, &shared.destinations, by, now).await;
    subscribe(shard, shared, id);
    let (json, created) = outcome?;
    Ok(Response::json(if created { 201 } else { 200 }, json.to_string().into_bytes()))
}

/// Runs a routed request on its owner shard (called on that shard's thread).
pub async fn execute(shard: &Shard, shared: &Shared, route: Route, request: Request) -> Response {
    if route.is_access() {
        let by = crate::admin::access::authenticate(shared, &request.head).and_then(|who| who.changed_by());
        return crate::admin::access::execute(shard, shared, route, request, by).await;
    }
    let principal = if route.is_admin() { crate::admin::access::authenticate(shared, &request.head) } else { None };
    if let Some(Principal::Key(key)) = &principal {
        if !owned_by(shard, &route, &key.tenant_id) {
            return EngineError::NotFound("not found".into()).into_response();
        }
    }
    let now = crate::clock::now_ms();
    let ok = |json: serde_json::Value| Response::json(200, json.to_string().into_bytes());
    let outcome = match route {
        Route::ListEvents(query) => {
            Ok(ok(crate::admin::events::page(crate::admin::events::list_local(shard, &query), query.limit)))
        }
        // One partition's page of a cluster-wide listing (the asking node merges them).
        Route::ListEndpoints(query) => Ok(ok(crate::admin::events::endpoints_page(
            crate::admin::events::endpoints_local(shard, &query),
            query.limit,
        ))),
        Route::PutTenant { .. }
        | Route::GetTenant { .. }
        | Route::DeleteTenant { .. }
        | Route::CreateKey { .. }
        | Route::ListKeys { .. }
        | Route::RevokeKey { .. } => Err(EngineError::NotFound("not an endpoint or event operation".into())),
        Route::RetryEvent { event_id, endpoint_id } => retry_event(shard, shared, event_id, endpoint_id, now).await,
        Route::Publish { channel, tenant } => {
            crate::admin::publish::publish(shard, shared, channel, tenant, request).await
        }
        Route::RetryFailed { id } => {
            shard.retry_failed(&id, now).await.map(|json| Response::json(202, json.to_string().into_bytes()))
        }
        Route::SetEnabled { id, enabled } => {
            let by = principal.as_ref().and_then(Principal::changed_by);
            shard.set_enabled_by(&id, enabled, by, now).await.map(ok)
        }
        Route::Ingest { endpoint_id } => ingest(shard, shared, endpoint_id, request).await,
        Route::PutEndpoint { id } | Route::CreateEndpoint { id } => {
            put_endpoint(shard, shared, &id, &request, principal.as_ref(), now).await
        }
        Route::GetEndpoint { id } => shard.get_endpoint(&id, now).map(|mut json| {
            if !may_see_secrets(principal.as_ref()) {
                crate::model::endpoint::Endpoint::hide_secrets(&mut json);
            }
            ok(json)
        }),
        Route::DeleteEndpoint { id } => {
            let by = principal.as_ref().and_then(Principal::changed_by);
            let outcome = shard.delete_endpoint_by(&id, by, now).await;
            subscribe(shard, shared, &id);
            outcome.map(|()| Response::empty(204))
        }
        Route::GetEvent { event_id } => {
            let tenant = match &principal {
                Some(Principal::Key(key)) => Some(key.tenant_id.clone()),
                _ => None,
            };
            get_event(shard, shared, event_id, tenant, now).await.map(ok)
        }
        Route::EventProof { event_id } if shard.stream().is_some() => shard.prove_in_stream(event_id).await.map(ok),
        Route::EventProof { event_id } => shard.prove_event(event_id).await.map(|proof| {
            let json = crate::admin::audit::proof_json(event_id, shard.index, &proof);
            Response::json(200, json.to_string().into_bytes())
        }),
        Route::EventPayload { event_id } => shard.event_payload(event_id).await.map(ok),
        Route::Health
        | Route::Ready
        | Route::Metrics
        | Route::OpenApi
        | Route::Ui { .. }
        | Route::Session
        | Route::Cluster
        | Route::AuditSegments
        | Route::AuditChanges { .. } => Err(EngineError::NotFound("not a shard operation".into())),
    };
    outcome.unwrap_or_else(EngineError::into_response)
}

/// Whether `principal` sees endpoints' secrets: the operator token and keys with `write` (which
/// could replace them anyway), not a key that may only read.
fn may_see_secrets(principal: Option<&Principal>) -> bool {
    match principal {
        Some(Principal::Key(key)) => key.scopes.has(crate::model::tenant::Scope::Write),
        _ => true,
    }
}

/// Brings the shared subscriptions in line with endpoint `id` as this shard's state has it
/// (after any change, whatever its outcome: a change whose answer failed may still be durable).
fn subscribe(shard: &Shard, shared: &Shared, id: &str) {
    match shard.state().borrow().endpoints.get(id) {
        Some(entry) => shared.subscribe(&entry.endpoint),
        None => shared.unsubscribe(id),
    }
}

/// An event ingested for one endpoint (here), or a published one (its deliveries gathered from
/// every shard). A key (`tenant`) asking for one this shard's memory does not know gets it from
/// the index only, filtered to its tenant: other shards' memory cannot say whose it is.
async fn get_event(
    shard: &Shard,
    shared: &Shared,
    event_id: EventId,
    tenant: Option<String>,
    now: u64,
) -> Result<serde_json::Value, EngineError> {
    match shard.get_event(event_id, now) {
        Err(EngineError::NotFound(message))
            if event_id.published() == event_id
                && (tenant.is_none() || known_here(&shard.state().borrow(), event_id)) =>
        {
            match crate::admin::publish::published_json(shard, shared, event_id).await? {
                Some(json) => Ok(json),
                None => from_index(shard, event_id, tenant, EngineError::NotFound(message)).await,
            }
        }
        Err(EngineError::NotFound(message)) => {
            from_index(shard, event_id, tenant, EngineError::NotFound(message)).await
        }
        outcome => outcome,
    }
}

/// `POST /admin/events/{id}/retry`: an event of this shard, or a published event's deliveries.
async fn retry_event(
    shard: &Shard,
    shared: &Shared,
    event_id: EventId,
    endpoint_id: Option<String>,
    now: u64,
) -> Result<Response, EngineError> {
    let direct = {
        let state = shard.state().borrow();
        state.events.get(&event_id).is_some_and(|event| {
            !event.delivery && endpoint_id.as_deref().is_none_or(|wanted| state.endpoint_of(event) == wanted)
        })
    };
    if direct {
        let json = shard.retry_event(event_id, now).await?;
        return Ok(Response::json(202, json.to_string().into_bytes()));
    }
    crate::admin::publish::retry_published(shard, shared, event_id, endpoint_id.as_deref()).await
}

/// From the index for events that left memory (terminal ones beyond the window); another
/// tenant's is `missing`, exactly as one the index does not have.
async fn from_index(
    shard: &Shard,
    event_id: EventId,
    tenant: Option<String>,
    missing: EngineError,
) -> Result<serde_json::Value, EngineError> {
    let Some(index) = shard.index_handle() else {
        return Err(missing);
    };
    match index.query(crate::index::query::Query::Get(event_id, tenant)).await? {
        serde_json::Value::Null => Err(missing),
        found => Ok(found),
    }
}

/// What ingest and publish take from a request's headers besides the signature.
pub(crate) struct Inbound {
    pub(crate) idempotency_key: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) trace: crate::model::trace::Inbound,
    pub(crate) event_type: String,
}

impl Inbound {
    /// Reads and checks the headers: a bad `X-Idempotency-Key` or `X-Event-Type` is 400 E1005;
    /// a bad or repeated `traceparent` only starts a new trace (W3C Trace Context).
    pub(crate) fn read(request: &Request) -> Result<Self, EngineError> {
        let headers = &request.head.headers;
        let idempotency_key = match headers.get(HeaderName::IdempotencyKey) {
            Some(key) if idempotency::valid_key(key) => Some(String::from_utf8_lossy(key).into_owned()),
            Some(_) => {
                return Err(EngineError::Invalid("X-Idempotency-Key must be 1 to 255 visible ASCII characters".into()))
            }
            None => None,
        };
        let event_type = match headers.get(HeaderName::EventType) {
            Some(value) if event_type::valid_event_type(value) => String::from_utf8_lossy(value).into_owned(),
            Some(_) => return Err(EngineError::Invalid("X-Event-Type must be 1 to 128 of A-Z a-z 0-9 . _ : -".into())),
            None => crate::model::json_scan::event_type_field(&request.body)
                .unwrap_or(event_type::EVENT_TYPE_DEFAULT)
                .to_string(),
        };
        let trace = crate::model::trace::inbound(
            headers.get_all(HeaderName::Traceparent),
            headers.get_all(HeaderName::Tracestate),
        );
        let content_type =
            headers.get(HeaderName::ContentType).map(|value| String::from_utf8_lossy(value).into_owned());
        Ok(Self { idempotency_key, content_type, trace, event_type })
    }

    /// The trace id of the sender's valid `traceparent`, for the request's span.
    fn trace_id(&self) -> Option<&str> {
        self.trace.traceparent.as_deref().and_then(crate::model::trace::trace_id)
    }
}

async fn ingest(
    shard: &Shard,
    shared: &Shared,
    endpoint_id: String,
    request: Request,
) -> Result<Response, EngineError> {
    let inbound = Inbound::read(&request)?;
    let bearer = match crate::admin::access::authenticate(shared, &request.head) {
        None => IngestBearer::Nobody,
        Some(Principal::Operator) => IngestBearer::Operator,
        Some(Principal::Key(key)) => IngestBearer::Key {
            tenant_id: key.tenant_id.clone(),
            ingest: key.scopes.has(crate::model::tenant::Scope::Ingest),
        },
    };
    // The event id is known only at the end, so it goes on the outcome's log line rather than
    // on the span (recording it would format the span's fields a second time per request).
    let span = tracing::info_span!("ingest", endpoint_id = %endpoint_id, trace_id = inbound.trace_id());
    let ingest = Ingest {
        endpoint_id,
        idempotency_key: inbound.idempotency_key,
        content_type: inbound.content_type,
        traceparent: inbound.trace.traceparent,
        tracestate: inbound.trace.tracestate,
        event_type: inbound.event_type,
        headers: request.head.headers,
        bearer,
        payload: request.body,
    };
    let outcome = shard.ingest(ingest, crate::clock::now_ms()).instrument(span.clone()).await;
    span.in_scope(|| match outcome {
        Ok(Accepted::Received(event_id)) => {
            tracing::debug!(%event_id, "accepted");
            Ok(accepted(202, event_id, "received"))
        }
        Ok(Accepted::Duplicate(event_id)) => {
            tracing::debug!(%event_id, "duplicate");
            Ok(accepted(200, event_id, "duplicate"))
        }
        Err(error) => {
            tracing::debug!(code = error.code(), %error, "refused");
            Err(error)
        }
    })
}

fn accepted(status: u16, event_id: EventId, word: &str) -> Response {
    Response::json(status, json!({"event_id": event_id.to_string(), "status": word}).to_string().into_bytes())
}

/// `ep_` + 26 random Crockford base32 characters.
fn generate_endpoint_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness fall back to the clock: ids stay unique enough and creation never fails.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = u128::from(crate::clock::now_ms()).to_le_bytes();
    }
    let id = EventId(u128::from_le_bytes(bytes) >> 2).to_string();
    format!("ep_{}", &id[4..])
}
