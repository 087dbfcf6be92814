//! The subscription index: which endpoints a publish to a channel reaches, found without scanning
//! every endpoint or every pattern of the channel.
//!
//! Per channel, endpoints are filed under each exact type they listed and under the prefix of
//! each pattern ending in `*` (the empty prefix for `*` and for endpoints that listed no
//! patterns). Matching a type of length L looks up its prefixes only at the prefix lengths that
//! occur in the channel (at most L + 1 of them), plus the type itself, then merges the sets.
//! Pattern syntax and meaning are [`crate::model::event_type`]'s; this index gives the same
//! answer as [`patterns_match`](crate::model::event_type::patterns_match) over every endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::limits;

/// Endpoint ids in order, so that a match through one set is already sorted.
type EndpointSet = BTreeSet<Arc<str>>;

/// Which endpoints a publish to a channel reaches.
#[derive(Debug, Default)]
pub struct Subscriptions {
    channels: HashMap<Box<str>, ChannelIndex>,
    /// What each endpoint subscribed to, so that replacing or removing it undoes exactly its
    /// entries. Its key is the one `Arc` every entry of the endpoint shares.
    endpoints: HashMap<Arc<str>, Subscription>,
}

/// One channel's entries. Empty sets and unused prefix lengths are removed as they empty, so an
/// index holds nothing for endpoints that are gone.
#[derive(Debug, Default)]
struct ChannelIndex {
    /// Endpoints by the exact type they listed.
    exact: HashMap<Box<str>, EndpointSet>,
    /// Endpoints by the prefix of a pattern ending in `*`.
    prefixes: HashMap<Box<str>, EndpointSet>,
    /// How many keys of `prefixes` have each length: matching looks up only these lengths.
    prefix_lengths: BTreeMap<usize, usize>,
    /// Endpoints subscribed to the channel.
    endpoints: usize,
}

/// One endpoint's subscription, each list sorted and without repeats.
#[derive(Debug)]
struct Subscription {
    channels: Vec<Box<str>>,
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl Subscriptions {
    /// Sets (replaces) an endpoint's subscription; empty `channels` removes it; empty `patterns` =
    /// every type. The caller has checked the names and the counts
    /// ([`limits::ENDPOINT_CHANNELS_MAX`], [`limits::ENDPOINT_EVENT_TYPES_MAX`]).
    pub fn set(&mut self, endpoint_id: &str, channels: &[String], patterns: &[String]) {
        debug_assert!(channels.len() <= limits::ENDPOINT_CHANNELS_MAX);
        debug_assert!(patterns.len() <= limits::ENDPOINT_EVENT_TYPES_MAX);
        self.remove(endpoint_id);
        if channels.is_empty() {
            return;
        }
        let subscription = Subscription::new(channels, patterns);
        let endpoint: Arc<str> = Arc::from(endpoint_id);
        for channel in &subscription.channels {
            self.channels.entry(channel.clone()).or_default().insert(&endpoint, &subscription);
        }
        self.endpoints.insert(endpoint, subscription);
    }

    /// Removes an endpoint.
    pub fn remove(&mut self, endpoint_id: &str) {
        let Some((endpoint, subscription)) = self.endpoints.remove_entry(endpoint_id) else {
            return;
        };
        for channel in &subscription.channels {
            let Some(index) = self.channels.get_mut(&**channel) else {
                debug_assert!(false, "channel {channel} of {endpoint} is not indexed");
                continue;
            };
            index.remove(&endpoint, &subscription);
            if index.endpoints == 0 {
                debug_assert!(index.exact.is_empty() && index.prefixes.is_empty() && index.prefix_lengths.is_empty());
                self.channels.remove(&**channel);
            }
        }
    }

    /// The endpoints subscribed to `channel` whose patterns match `event_type`, each once, sorted
    /// by endpoint id (deterministic), at most `limit`; the second value says whether more matched
    /// than `limit`.
    pub fn matching(&self, channel: &str, event_type: &str, limit: usize) -> (Vec<Arc<str>>, bool) {
        let Some(index) = self.channels.get(channel) else {
            return (Vec::new(), false);
        };
        let mut sets: Vec<&EndpointSet> = Vec::new();
        for length in index.prefix_lengths.keys().take_while(|length| **length <= event_type.len()) {
            if let Some(set) = event_type.get(..*length).and_then(|prefix| index.prefixes.get(prefix)) {
                sets.push(set);
            }
        }
        if let Some(set) = index.exact.get(event_type) {
            sets.push(set);
        }
        merge(&sets, limit)
    }

    /// Endpoints subscribed to a channel (for tests and metrics).
    pub fn channel_len(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |index| index.endpoints)
    }

    /// Whether no endpoint is subscribed to anything.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

impl Subscription {
    fn new(channels: &[String], patterns: &[String]) -> Subscription {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some(prefix) => prefixes.push(Box::from(prefix)),
                None => exact.push(Box::from(pattern.as_str())),
            }
        }
        // No patterns means every type, which is what the empty prefix matches.
        if patterns.is_empty() {
            prefixes.push(Box::from(""));
        }
        Subscription {
            channels: sorted_unique(channels.iter().map(|channel| Box::from(channel.as_str())).collect()),
            exact: sorted_unique(exact),
            prefixes: sorted_unique(prefixes),
        }
    }
}

fn sorted_unique(mut names: Vec<Box<str>>) -> Vec<Box<str>> {
    names.sort_unstable();
    names.dedup();
    names
}

impl ChannelIndex {
    fn insert(&mut self, endpoint: &Arc<str>, subscription: &Subscription) {
        self.endpoints += 1;
        for event_type in &subscription.exact {
            self.exact.entry(event_type.clone()).or_default().insert(Arc::clone(endpoint));
        }
        for prefix in &subscription.prefixes {
            let set = self.prefixes.entry(prefix.clone()).or_insert_with(|| {
                *self.prefix_lengths.entry(prefix.len()).or_default() += 1;
                EndpointSet::new()
            });
            set.insert(Arc::clone(endpoint));
        }
    }

    fn remove(&mut self, endpoint: &Arc<str>, subscription: &Subscription) {
        self.endpoints = self.endpoints.saturating_sub(1);
        for event_type in &subscription.exact {
            remove_from(&mut self.exact, event_type, endpoint);
        }
        for prefix in &subscription.prefixes {
            if remove_from(&mut self.prefixes, prefix, endpoint) {
                if let Some(count) = self.prefix_lengths.get_mut(&prefix.len()) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.prefix_lengths.remove(&prefix.len());
                    }
                }
            }
        }
    }
}

/// Removes `endpoint` from the set under `key`; says whether that emptied (and dropped) the set.
fn remove_from(sets: &mut HashMap<Box<str>, EndpointSet>, key: &str, endpoint: &Arc<str>) -> bool {
    let Some(set) = sets.get_mut(key) else {
        debug_assert!(false, "{endpoint} is not filed under {key}");
        return false;
    };
    set.remove(endpoint);
    let emptied = set.is_empty();
    if emptied {
        sets.remove(key);
    }
    emptied
}

/// The union of `sets` in order, at most `limit`, and whether it held more.
fn merge(sets: &[&EndpointSet], limit: usize) -> (Vec<Arc<str>>, bool) {
    if let [only] = sets {
        // One set is already sorted and without repeats.
        return (only.iter().take(limit).cloned().collect(), only.len() > limit);
    }
    let mut union: Vec<&Arc<str>> = sets.iter().flat_map(|set| set.iter()).collect();
    // Each set is a sorted run, which the stable sort merges rather than sorting from scratch.
    union.sort();
    union.dedup();
    let more = union.len() > limit;
    (union.into_iter().take(limit).cloned().collect(), more)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::model::event_type::patterns_match;
    use proptest::prelude::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn ids(matched: &(Vec<Arc<str>>, bool)) -> Vec<&str> {
        matched.0.iter().map(|id| &**id).collect()
    }

    // The contract's pattern table must hold through the index: exact names, prefixes with `*`,
    // `*` alone and no patterns at all each reach the endpoints the contract says.
    #[test]
    fn matching_follows_the_pattern_table() {
        let mut subscriptions = Subscriptions::default();
        let orders = strings(&["orders"]);
        subscriptions.set("exact", &orders, &strings(&["order.created"]));
        subscriptions.set("prefix", &orders, &strings(&["order.*"]));
        subscriptions.set("short", &orders, &strings(&["order*"]));
        subscriptions.set("star", &orders, &strings(&["*"]));
        subscriptions.set("none", &orders, &[]);
        subscriptions.set("other", &orders, &strings(&["payment.completed", "refund.*"]));
        let cases: &[(&str, &[&str])] = &[
            ("order.created", &["exact", "none", "prefix", "short", "star"]),
            ("order.created.v2", &["none", "prefix", "short", "star"]),
            ("order.", &["none", "prefix", "short", "star"]),
            ("order", &["none", "short", "star"]),
            ("orders.created", &["none", "short", "star"]),
            ("Order.created", &["none", "star"]),
            ("payment.completed", &["none", "other", "star"]),
            ("payment.complete", &["none", "star"]),
            ("refund.issued", &["none", "other", "star"]),
        ];
        for (event_type, expected) in cases {
            let matched = subscriptions.matching("orders", event_type, 100);
            assert_eq!(ids(&matched), *expected, "{event_type}");
            assert!(!matched.1);
        }
        assert_eq!(subscriptions.channel_len("orders"), 6);
    }

    // Channels are separate audiences: a publish reaches only the channel it names.
    #[test]
    fn channels_are_separate() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.set("both", &strings(&["billing", "shipping"]), &[]);
        subscriptions.set("billing-only", &strings(&["billing"]), &strings(&["invoice.*"]));
        subscriptions.set("shipping-only", &strings(&["shipping"]), &strings(&["invoice.paid"]));
        assert_eq!(ids(&subscriptions.matching("billing", "invoice.paid", 10)), ["billing-only", "both"]);
        assert_eq!(ids(&subscriptions.matching("shipping", "invoice.paid", 10)), ["both", "shipping-only"]);
        assert_eq!(ids(&subscriptions.matching("shipping", "invoice.sent", 10)), ["both"]);
        assert_eq!(subscriptions.matching("unknown", "invoice.paid", 10), (Vec::new(), false));
        assert_eq!((subscriptions.channel_len("billing"), subscriptions.channel_len("shipping")), (2, 2));
        assert_eq!(subscriptions.channel_len("unknown"), 0);
    }

    // Updating an endpoint's subscription must move it, not add to it: the old channel and
    // patterns stop reaching it at once.
    #[test]
    fn replacing_a_subscription_moves_the_endpoint() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.set("endpoint", &strings(&["old"]), &strings(&["a.*"]));
        subscriptions.set("endpoint", &strings(&["new"]), &strings(&["b"]));
        assert_eq!(subscriptions.channel_len("old"), 0);
        assert!(subscriptions.matching("old", "a.x", 10).0.is_empty());
        assert_eq!(ids(&subscriptions.matching("new", "b", 10)), ["endpoint"]);
        subscriptions.set("endpoint", &strings(&["new"]), &strings(&["c"]));
        assert!(subscriptions.matching("new", "b", 10).0.is_empty());
        assert_eq!(ids(&subscriptions.matching("new", "c", 10)), ["endpoint"]);
        assert_eq!(subscriptions.channel_len("new"), 1);
    }

    // A deleted endpoint must receive nothing more, whether removed outright or set with no
    // channels.
    #[test]
    fn removed_endpoints_match_nothing() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.set("kept", &strings(&["c"]), &[]);
        subscriptions.set("removed", &strings(&["c"]), &[]);
        subscriptions.set("emptied", &strings(&["c"]), &[]);
        subscriptions.remove("removed");
        subscriptions.set("emptied", &[], &strings(&["x"]));
        subscriptions.remove("never-subscribed");
        assert_eq!(ids(&subscriptions.matching("c", "x", 10)), ["kept"]);
        assert_eq!(subscriptions.channel_len("c"), 1);
    }

    // An endpoint whose patterns overlap must get one delivery, not one per matching pattern.
    #[test]
    fn an_endpoint_matching_several_ways_appears_once() {
        let mut subscriptions = Subscriptions::default();
        let patterns = strings(&["order.created", "order.*", "order*", "*", "o*", "order.created"]);
        subscriptions.set("endpoint", &strings(&["c", "c"]), &patterns);
        subscriptions.set("another", &strings(&["c"]), &strings(&["order.created"]));
        assert_eq!(
            subscriptions.matching("c", "order.created", 10),
            (vec![Arc::from("another"), Arc::from("endpoint")], false)
        );
        assert_eq!(subscriptions.channel_len("c"), 2);
    }

    // The publish record lists its endpoints up to a bound: the first ones by id are kept, and
    // the caller learns that some were left out.
    #[test]
    fn limit_keeps_the_first_and_flags_the_rest() {
        let mut subscriptions = Subscriptions::default();
        for name in ["e", "d", "c", "b", "a"] {
            subscriptions.set(name, &strings(&["c"]), &strings(&[if name < "c" { "t" } else { "*" }]));
        }
        assert_eq!(subscriptions.matching("c", "t", 3), (vec![Arc::from("a"), Arc::from("b"), Arc::from("c")], true));
        assert_eq!(ids(&subscriptions.matching("c", "t", 5)), ["a", "b", "c", "d", "e"]);
        assert!(!subscriptions.matching("c", "t", 5).1);
        assert_eq!(subscriptions.matching("c", "t", 0), (Vec::new(), true));
        assert_eq!(subscriptions.matching("c", "u", 2), (vec![Arc::from("c"), Arc::from("d")], true));
    }

    // Endpoints come and go for the life of the process: the index must not keep sets, prefix
    // lengths or channels for subscriptions that are gone.
    #[test]
    fn set_replace_remove_cycles_leave_the_index_empty() {
        let mut subscriptions = Subscriptions::default();
        for round in 0..3 {
            for endpoint in 0..20 {
                let name = format!("endpoint-{endpoint}");
                let channels = strings(&["a", if endpoint % 2 == 0 { "b" } else { "c" }]);
                subscriptions.set(&name, &channels, &strings(&["x.*", "x.y", "*"]));
                subscriptions.set(&name, &strings(&["d"]), &[format!("type-{round}"), format!("p{endpoint}*")]);
            }
            for endpoint in 0..20 {
                if endpoint % 2 == 0 {
                    subscriptions.remove(&format!("endpoint-{endpoint}"));
                } else {
                    subscriptions.set(&format!("endpoint-{endpoint}"), &[], &[]);
                }
            }
            assert!(subscriptions.is_empty());
            assert!(subscriptions.channels.is_empty(), "{:?}", subscriptions.channels);
        }
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Set(String, Vec<String>, Vec<String>),
        Remove(String),
    }

    fn operation() -> impl Strategy<Value = Operation> {
        let endpoint = "e[0-9]";
        let channels = prop::collection::vec("c[0-2]", 0..3);
        let pattern = prop_oneof!["[ab.]{1,3}", "[ab.]{0,2}\\*"];
        let patterns = prop::collection::vec(pattern, 0..4);
        prop_oneof![
            4 => (endpoint, channels, patterns).prop_map(|(endpoint, channels, patterns)| Operation::Set(endpoint, channels, patterns)),
            1 => endpoint.prop_map(Operation::Remove),
        ]
    }

    proptest! {
        // The index is an optimisation of a plain scan: after any sequence of updates it must
        // answer exactly what checking every endpoint's patterns would, and forget everything
        // once every endpoint is removed.
        #[test]
        fn matching_agrees_with_a_scan_of_every_endpoint(
            operations in prop::collection::vec(operation(), 0..40),
            queries in prop::collection::vec(("c[0-3]", "[ab.]{1,4}", 0usize..6), 1..20),
        ) {
            let mut subscriptions = Subscriptions::default();
            let mut model: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
            for operation in &operations {
                match operation {
                    Operation::Set(endpoint, channels, patterns) => {
                        subscriptions.set(endpoint, channels, patterns);
                        model.insert(endpoint.clone(), (channels.clone(), patterns.clone()));
                    }
                    Operation::Remove(endpoint) => {
                        subscriptions.remove(endpoint);
                        model.remove(endpoint);
                    }
                }
            }
            for (channel, event_type, limit) in &queries {
                let subscribed: Vec<&String> = model.iter()
                    .filter(|(_, (channels, _))| channels.contains(channel))
                    .map(|(endpoint, _)| endpoint)
                    .collect();
                let expected: Vec<&str> = model.iter()
                    .filter(|(_, (channels, patterns))| channels.contains(channel) && patterns_match(patterns, event_type))
                    .map(|(endpoint, _)| endpoint.as_str())
                    .collect();
                let matched = subscriptions.matching(channel, event_type, *limit);
                let shown: Vec<&str> = expected.iter().copied().take(*limit).collect();
                prop_assert_eq!(ids(&matched), shown, "{} {}", channel, event_type);
                prop_assert_eq!(matched.1, expected.len() > *limit);
                prop_assert_eq!(subscriptions.channel_len(channel), subscribed.len());
            }
            for endpoint in model.keys() {
                subscriptions.remove(endpoint);
            }
            prop_assert!(subscriptions.is_empty() && subscriptions.channels.is_empty());
        }
    }
}
