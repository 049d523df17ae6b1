//! The routing table the proxy reads: compiled configuration plus live endpoint state.
//! Replaced wholesale on every configuration change; readers keep the `Arc` they started with.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::matching::{CompiledRule, RequestFacts};
use super::{CompiledConfig, CompiledRoute, CompiledServer, ObjectKey};
use crate::endpoints::{EndpointRegistry, EndpointState};
use crate::metrics::{Metrics, ModelMetrics};
use crate::prefix::tokenize::Tokenizers;
use muster_prefix::tokenizer::PromptTokenizer;

/// A server with its endpoints' live state.
#[derive(Debug)]
pub struct ServerRuntime {
    /// Compiled configuration.
    pub compiled: Arc<CompiledServer>,
    /// Live state of each routable endpoint, in `compiled.endpoints` order.
    pub endpoints: Vec<Arc<EndpointState>>,
    /// Live state of each prefill-only endpoint, in `compiled.prefill_endpoints` order.
    pub prefill: Vec<Arc<EndpointState>>,
    /// Round-robin position, kept across reloads.
    pub round_robin: Arc<AtomicU64>,
    /// The model's tokenizer for prefix scoring and prompt counts; `None`: byte blocks and
    /// bytes / 4 estimates.
    pub tokenizer: Option<Arc<PromptTokenizer>>,
}

/// Where a request goes.
#[derive(Debug)]
pub struct Resolved<'a> {
    /// The route that matched.
    pub route: &'a Arc<CompiledRoute>,
    /// The rule that matched.
    pub rule: &'a CompiledRule,
    /// The chosen target server.
    pub server: &'a Arc<ServerRuntime>,
    /// The request names a LoRA adapter (no model rewrite).
    pub lora: bool,
}

/// Why a request cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No route serves the model name.
    UnknownModel,
    /// Routes exist but no rule matched.
    NoRuleMatched,
    /// The rule's target ModelServer does not exist.
    ServerMissing(ObjectKey),
}

/// The proxy's immutable view of the configuration.
#[derive(Default)]
pub struct RoutingTable {
    /// Compiled routes and servers.
    pub config: CompiledConfig,
    /// Servers with live endpoint state.
    pub servers: HashMap<ObjectKey, Arc<ServerRuntime>>,
    /// Metric handles per served model name.
    pub model_metrics: HashMap<String, Arc<ModelMetrics>>,
}

/// Round-robin positions by server, so a reload does not restart every rotation at 0.
#[derive(Default)]
pub struct RoundRobinPositions(Mutex<HashMap<ObjectKey, Arc<AtomicU64>>>);

impl RoutingTable {
    /// Attaches live endpoint state (created on first sight) to a compiled configuration.
    pub fn build(
        config: CompiledConfig,
        registry: &EndpointRegistry,
        positions: &RoundRobinPositions,
        metrics: &Metrics,
        tokenizers: &Tokenizers,
    ) -> RoutingTable {
        let mut rr = positions.0.lock().expect("positions lock");
        rr.retain(|k, _| config.servers.contains_key(k));
        let servers = config
            .servers
            .iter()
            .map(|(key, compiled)| {
                let states = |specs: &[super::EndpointSpec]| -> Vec<Arc<EndpointState>> {
                    specs
                        .iter()
                        .map(|e| registry.get_or_create(e, compiled.engine, compiled.upstream))
                        .collect()
                };
                let endpoints = states(&compiled.endpoints);
                let prefill = states(&compiled.prefill_endpoints);
                let uses_prefix = compiled.profile.uses_prefix();
                if uses_prefix {
                    let args = &compiled.profile.prefix_cache;
                    for e in endpoints.iter().chain(&prefill) {
                        e.configure_prefix(args.capacity_blocks, args.events_stale_after());
                    }
                }
                // Loaded once per file, for every server with one configured: prefix scoring
                // and token limits both count with it.
                let tokenizer = {
                    let mut models: Vec<&str> = Vec::new();
                    if let Some(m) = &compiled.model_rewrite {
                        models.push(m);
                    }
                    for routes in config.routes.values() {
                        for r in routes {
                            let targets_us = r
                                .rules
                                .iter()
                                .any(|rule| rule.targets.iter().any(|(k, _)| k == key));
                            if targets_us && !models.contains(&r.model_name.as_str()) {
                                models.push(&r.model_name);
                            }
                        }
                    }
                    tokenizers.resolve(compiled.tokenizer.as_deref(), &models)
                };
                let runtime = ServerRuntime {
                    compiled: compiled.clone(),
                    endpoints,
                    prefill,
                    round_robin: rr.entry(key.clone()).or_default().clone(),
                    tokenizer,
                };
                (key.clone(), Arc::new(runtime))
            })
            .collect();
        let model_metrics = config
            .models
            .iter()
            .map(|m| (m.clone(), metrics.for_model(m)))
            .collect();
        RoutingTable {
            config,
            servers,
            model_metrics,
        }
    }

    /// Finds the route, rule and target server for a request: routes for the model name
    /// (or LoRA adapter) oldest first, the first rule that matches, then a weighted target.
    pub fn resolve(
        &self,
        facts: &RequestFacts<'_>,
        random: u64,
    ) -> Result<Resolved<'_>, ResolveError> {
        let routes = self
            .config
            .routes
            .get(facts.model)
            .ok_or(ResolveError::UnknownModel)?;
        for route in routes {
            if let Some(rule) = route.rules.iter().find(|r| r.matches(facts)) {
                let key = rule.pick_target(random);
                let server = self
                    .servers
                    .get(key)
                    .ok_or_else(|| ResolveError::ServerMissing(key.clone()))?;
                let lora = route.model_name != facts.model
                    && route.lora_adapters.iter().any(|l| l == facts.model);
                return Ok(Resolved {
                    route,
                    rule,
                    server,
                    lora,
                });
            }
        }
        Err(ResolveError::NoRuleMatched)
    }

    /// A JSON-friendly summary for `/debug/config`.
    pub fn summary(&self) -> TableSummary {
        let mut routes: Vec<RouteSummary> = Vec::new();
        for (model, list) in &self.config.routes {
            for r in list {
                routes.push(RouteSummary {
                    name: model.clone(),
                    route: r.key.to_string(),
                    rules: r
                        .rules
                        .iter()
                        .map(|rule| RuleSummary {
                            name: rule.name.to_string(),
                            conditional: rule.matcher.is_some(),
                            targets: rule
                                .targets
                                .iter()
                                .map(|(k, w)| (k.to_string(), *w))
                                .collect(),
                        })
                        .collect(),
                });
            }
        }
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut servers: Vec<&CompiledServer> =
            self.config.servers.values().map(|s| s.as_ref()).collect();
        servers.sort_by(|a, b| a.key.cmp(&b.key));
        TableSummary {
            models: self.config.models.clone(),
            routes,
            servers: servers.into_iter().cloned().collect(),
        }
    }
}

/// `/debug/config` body.
#[derive(Debug, Serialize)]
pub struct TableSummary {
    /// Served model names.
    pub models: Vec<String>,
    /// Routes per name, oldest first.
    pub routes: Vec<RouteSummary>,
    /// Servers.
    pub servers: Vec<CompiledServer>,
}

/// One route under one name.
#[derive(Debug, Serialize)]
pub struct RouteSummary {
    /// Model or adapter name.
    pub name: String,
    /// Route namespace/name.
    pub route: String,
    /// Rules in order.
    pub rules: Vec<RuleSummary>,
}

/// One rule.
#[derive(Debug, Serialize)]
pub struct RuleSummary {
    /// Rule name.
    pub name: String,
    /// Has match conditions.
    pub conditional: bool,
    /// Targets and weights.
    pub targets: Vec<(String, u32)>,
}
